"""pynetdicom as a requestor (the CLI's send/find/echo, the benchmarks' clients, the stack's
health echo): what every association of ours needs before its first request."""

from __future__ import annotations

from typing import Any


def open_association(ae: Any, host: str, port: int, called: str, **kwargs: Any) -> Any:
    """``ae.associate`` with the requestor race below worked around (when accepted)."""
    assoc = ae.associate(host, port, ae_title=called, **kwargs)
    if assoc.is_established:
        keep_responses_for_the_caller(assoc)
    return assoc


def keep_responses_for_the_caller(assoc: Any) -> None:
    """Work around a race in pynetdicom's requestor (3.0.4; pydicom/pynetdicom#875): the
    association's own reactor thread takes messages off the DIMSE queue between operations
    and drops any response as "Received unexpected C-FIND service message". ``send_c_*``
    pause it first (``_reactor_checkpoint``), but the pause check is racy: the reactor can
    pass its checkpoint, the caller then sees it "paused", sends its request, and the reactor
    -- descheduled for a few ms on a loaded machine -- runs ``get_msg`` once the answer is
    already queued, and discards it. The caller then waits out its DIMSE timeout: the
    benchmarks' "10 s C-FIND stall" (the archive had answered: its own count of C-FIND
    operations was one higher per stall than the answers the client got, and the reactor
    logged the dropped response each time). Here the reactor only ever takes requests (the
    ones a requestor may get unsolicited); responses stay queued for the caller."""
    import threading

    dimse = assoc.dimse
    get_msg = dimse.get_msg

    def get_msg_guarded(block: bool = False) -> Any:
        if threading.current_thread() is assoc:  # the association's reactor thread
            q = dimse.msg_queue
            with q.mutex:
                head = q.queue[0][1] if q.queue else None
            if head is None or not head.is_valid_request:
                return None, None
        return get_msg(block)

    dimse.get_msg = get_msg_guarded
