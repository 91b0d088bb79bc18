"""The faust worker of the index node must not leave the root logger at DEBUG (faust does so
for its terminal spinner): every library debug call would then build a record for nothing."""

from __future__ import annotations

import logging

import faust

from strata.processors.app import make_worker


def test_worker_logging_leaves_debug_records_off() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        app = faust.App("strata-log-test", broker="kafka://127.0.0.1:1", web_enabled=False)
        make_worker(app)._setup_logging()
        assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("strata").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
