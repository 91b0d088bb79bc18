"""The lifecycle processor of the index node: moves due instances between tiers and deletes
them at the end of their retention period, following the policy (the pure decisions in
archive/lifecycle.py). Its parts:

- processor.py: ``LifecycleProcessor``, one pass (settle, select, copy + verify, journal, emit)
  and its crash-safety argument; its metrics;
- candidates.py: the instances due, from the index port (``candidates``, ``Candidate``);
- journal.py: the lifecycle journal, the durable record of moves and deletes in progress;
- executor.py: copy/verify/recall/delete against the tiers;
- emitter.py: the events it writes (TierTransitioned, InstanceDeleted; ``AccessRecorder``:
  StudyAccessed), with the common/events.py envelope.
"""

from strata.processors.lifecycle.candidates import Candidate, candidates
from strata.processors.lifecycle.emitter import AccessRecorder, event_id, wrap
from strata.processors.lifecycle.journal import Journal, Pending
from strata.processors.lifecycle.processor import LifecycleProcessor, PassResult

__all__ = [
    "AccessRecorder",
    "Candidate",
    "Journal",
    "LifecycleProcessor",
    "PassResult",
    "Pending",
    "candidates",
    "event_id",
    "wrap",
]
