"""HTTP answers shared by the archive's web interfaces: DICOMweb's read side (query/dicomweb/)
and STOW-RS (ingest/stow.py), so that neither imports the other."""

from __future__ import annotations

from aiohttp import web

DICOM_JSON = "application/dicom+json"


def error(status: int, reason: str) -> web.Response:
    """A JSON error body ``{"error": reason}``; ``reason`` never echoes request values."""
    return web.json_response({"error": reason}, status=status)
