"""The retrieve feature: which stored objects a C-MOVE/C-GET (or gRPC) request names (located
through the index port, processors/index/port.py), and how their bytes are sent unchanged.
Reading the bytes from their tier (hot, cold, the recall cache) is archive/source.py's
(``TieredSource``, ``HotSource``); ``local_paths`` overlaps those reads with sending.

Retrieved bytes are the stored bytes: the object is streamed from its file without decoding
and re-encoding (``dicomnet/requestor.send_store``), so what a workstation receives is
byte-identical, dataset for dataset, to what the modality sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path

# Tier access lives in archive/source.py; re-exported for the readers that import it from here.
from strata.archive.source import HotSource, ObjectSource, TieredSource
from strata.common.errors import Invalid
from strata.processors.index.matching import LEVELS
from strata.processors.index.port import Index, Located

__all__ = [
    "HotSource",
    "Located",
    "ObjectSource",
    "TieredSource",
    "locate",
    "local_paths",
    "parse_destinations",
]


def locate(index: Index, level: str, keys: dict[str, str], limit: int = 65535) -> list[Located]:
    """Instances named by a retrieve identifier (unique keys down to ``level``)."""
    if level not in LEVELS:
        raise Invalid(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    needed = {
        "PATIENT": "PatientID",
        "STUDY": "StudyInstanceUID",
        "SERIES": "SeriesInstanceUID",
        "IMAGE": "SOPInstanceUID",
    }[level]
    if not keys.get(needed, "").strip():
        raise Invalid(f"a {level} retrieve needs {needed}")
    located = index.locate(keys, limit)
    if len(located) > limit:
        raise Invalid(f"more than {limit} instances match: narrow the request")
    return located


def local_paths(
    source: ObjectSource, locs: list[Located], ahead: int = 8, workers: int = 4
) -> Iterator[tuple[Located, Path | Exception]]:
    """Each object with its local path (or why it has none), in order. Up to ``ahead`` objects
    are made local concurrently, so recalling a cold study overlaps with sending it instead of
    fetching one object after another (hot objects cost a stat)."""
    if not locs:
        return
    with ThreadPoolExecutor(max(1, min(workers, ahead)), thread_name_prefix="recall") as pool:
        todo = iter(locs)
        window: deque[tuple[Located, Future[Path]]] = deque(
            (loc, pool.submit(source.local_path, loc)) for loc in islice(todo, ahead)
        )
        try:
            while window:
                loc, fut = window.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    window.append((nxt, pool.submit(source.local_path, nxt)))
                try:
                    yield loc, fut.result()
                except Exception as exc:  # noqa: BLE001 - the caller decides per object
                    yield loc, exc
        finally:
            for _, f in window:  # a cancelled retrieve: fetches not started are dropped
                f.cancel()


def parse_destinations(spec: str) -> dict[str, tuple[str, int]]:
    """'AE1=host:port,AE2=host:port' -> {AE: (host, port)} (C-MOVE destinations)."""
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            ae, addr = item.split("=", 1)
            host, port = addr.rsplit(":", 1)
            out[ae.strip()] = (host.strip(), int(port))
        except ValueError as exc:
            raise Invalid(f"bad C-MOVE destination {item!r}: expected AE=host:port") from exc
    return out
