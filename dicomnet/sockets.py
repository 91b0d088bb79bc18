"""Socket options every DICOM connection of the archive gets, accepted or requested."""

from __future__ import annotations

import socket


def nodelay(sock: socket.socket | None) -> None:
    """Nagle's algorithm costs DIMSE ~40 ms per small PDU exchange (pynetdicom never turns it
    off): disable it."""
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
