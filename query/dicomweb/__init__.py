"""DICOMweb (PS3.18) for web viewers, on aiohttp:

- base.py: the dependencies (``WebDeps``), shared parsing, the error and CORS middlewares;
- qido.py: QIDO-RS, answered from the index with the same matching as C-FIND and gRPC;
- wado.py: WADO-RS objects, metadata and frames (transcoded by archive/transcode.py);
- rendered.py: WADO-RS rendered frames (JPEG, PNG);
- viewer.py: hosting of the OHIF viewer at "/";
- app.py: the aiohttp application, its routes and runner thread.

STOW-RS is an ingest interface and lives in ingest/stow.py (it writes through ingest/store.py);
the process wiring (cli/serve.py) hands it to ``create_app``. An unknown path under the
DICOMweb root answers 404 with a JSON body.
"""

from strata.query.dicomweb.app import DicomWeb, create_app, serve_in_thread
from strata.query.dicomweb.base import WebDeps, parse_frames
from strata.query.dicomweb.viewer import add_viewer

__all__ = [
    "DicomWeb",
    "WebDeps",
    "add_viewer",
    "create_app",
    "parse_frames",
    "serve_in_thread",
]
