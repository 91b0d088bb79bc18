"""DIMSE socket helpers shared by every DICOM endpoint of the archive."""

from __future__ import annotations

import socket
from typing import Any


def nodelay(sock: socket.socket | None) -> None:
    """Nagle's algorithm costs DIMSE ~40 ms per small PDU exchange (pynetdicom never turns it
    off): disable it."""
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on every accepted association's socket."""
    nodelay(getattr(getattr(event.assoc.dul, "socket", None), "socket", None))
