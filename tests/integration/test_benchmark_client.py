"""The project's pynetdicom requestors (strata/common/pynet.py: the CLI's and the
benchmarks' ``associate``) against a real peer (a pynetdicom Q/R SCP on loopback): a C-FIND
response that is queued while the association's reactor thread runs its loop stays for the
caller.

This is the race behind the benchmarks' "10 s C-FIND stall" (pydicom/pynetdicom#875): the
reactor of pynetdicom's requestor took the answer off the DIMSE queue and dropped it
("Received unexpected C-FIND service message"), and the caller waited out its DIMSE timeout.
The test puts a response on the queue of an idle association -- where the race leaves it --
and waits until the reactor has been through its loop twice more."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from benchmarks.common import associate, c_find
from strata.stack.procs import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def scp() -> Iterator[int]:
    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0x0000, None

    ae = AE(ae_title="FINDSCP")
    ae.add_supported_context(FIND)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    try:
        yield port
    finally:
        server.shutdown()


def test_a_queued_response_is_never_taken_by_the_reactor(scp: int) -> None:
    assoc = associate(scp, "FINDSCP", [(FIND,)], dimse_timeout=10)
    try:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        assert c_find(assoc, q) == []  # the association works
        reactor_turns = [0]
        inner = assoc.dimse.get_msg

        def counting(block: bool = False) -> Any:
            if threading.current_thread() is assoc:
                reactor_turns[0] += 1
            return inner(block)

        assoc.dimse.get_msg = counting
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = FIND
        rsp.Status = 0x0000
        context_id = assoc.accepted_contexts[0].context_id
        seen = reactor_turns[0]
        assoc.dimse.msg_queue.put((context_id, rsp))
        wait_for(lambda: reactor_turns[0] >= seen + 2, 30, "two turns of the reactor loop")
        # the caller (this thread) still gets the response
        assert assoc.dimse.get_msg(block=False) == (context_id, rsp)
    finally:
        assoc.release()
