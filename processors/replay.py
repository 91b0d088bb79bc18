"""Replay: rebuild index state from the log, from offset 0, into a fresh store.

Used by ``strata replay`` (into a new database) and by ``strata verify`` (which compares the
rebuilt index with the live one by checksums). The code path that writes rows is the live one
(projection.Batch, i.e. the rows of rows_for, + IndexStore.write): a replay exercises exactly
what the agent does.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from strata.common import kafka
from strata.common.errors import Unavailable
from strata.common.events import decode
from strata.common.kafka import Cluster, record
from strata.common.kafka import Positions as Positions  # re-exported: its callers import it here
from strata.common.kafka import end_positions as end_positions  # ditto
from strata.processors.index.projection import Batch
from strata.processors.index.store import IndexStore, Layout, Prepared, prepare


@dataclass
class ReplayResult:
    events: int
    seconds: float
    positions: Positions

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


Todo = dict[tuple[str, int], tuple[int, int]]


def replay(
    bootstrap: Cluster,
    index: IndexStore,
    until: Positions,
    start: Positions | None = None,
    batch: int = 50000,
    on_progress: Callable[[int], None] | None = None,
    in_process: bool = False,
    projectors: int | None = None,
    arrow: bool = True,
) -> ReplayResult:
    """Apply every event in [start, until) of each topic partition to ``index``.

    The log is read and projected in a process of its own (``_project``): reading, decoding
    and building the columns of a batch is Python work that held the GIL nearly all the time,
    so on one interpreter it could not run beside the inserts' own Python work. This process
    only inserts prepared batches, in log order, while the next one is prepared; the rows are
    the same either way (``in_process=True`` does it all here, with a writer thread).
    ``projectors`` processes read disjoint sets of whole partitions (by default as many as
    balance the partitions best, see ``projector_count``). Batches of up to
    ``batch`` events: every insert makes a part per table that chDB merges later, and
    study_stats is recomputed per batch for the studies it touched, so larger batches cost
    less per event (measured: 50k vs 20k, ~41 -> ~30 us of CPU per event in this process)."""
    start = start or {}
    todo: Todo = {
        (t, p): (start.get(t, {}).get(p, 0), end)
        for t, parts in until.items()
        for p, end in parts.items()
        if start.get(t, {}).get(p, 0) < end
    }
    t0 = time.monotonic()
    if not todo:
        return ReplayResult(0, 0.0, until)
    # A replay is its store's one user while it runs (a fresh index): Arrow inserts are safe.
    # Not inside the live index node (a point-in-time rebuild, processors/pit.py), whose
    # other threads query the engine meanwhile: arrow=False keeps the driver's inserts.
    arrow = arrow and index.use_arrow()
    try:
        n = (
            _replay_in_process(bootstrap, index, todo, batch, on_progress)
            if in_process
            else (_replay_with_projector(bootstrap, index, todo, batch, on_progress, projectors))
        )
    finally:
        if arrow:
            index.stop_arrow()
    return ReplayResult(n, time.monotonic() - t0, until)


def _batches(bootstrap: Cluster, todo: Todo, batch: int) -> Iterator[Batch]:
    """The events of ``todo`` projected, one Batch per fetch of up to ``batch`` records."""
    c = kafka.consumer(
        bootstrap,
        f"strata-replay-{uuid.uuid4()}",
        "replay",
        {
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            # the end of what is committed: a partition of a mirrored log (DR, docs/dr.md) may
            # end with a transaction marker, at whose offset (``hi`` - 1) no record comes
            "enable.partition.eof": True,
        },
    )
    try:
        c.assign([TopicPartition(t, p, lo) for (t, p), (lo, _hi) in todo.items()])
        remaining = set(todo)
        while remaining:
            pending = Batch()
            for m in c.consume(num_messages=batch, timeout=1.0):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # every committed record before ``hi`` has been read: what follows
                        # up to ``hi`` is markers (a caller that needs more asks again)
                        remaining.discard((m.topic() or "", m.partition() or 0))
                    continue
                r = record(m)
                topic, part, offset = r.topic, r.partition, r.offset
                key = (topic, part)
                if key not in remaining:
                    continue
                hi = todo[key][1]
                if offset >= hi:
                    remaining.discard(key)
                    continue
                try:
                    env = decode(r.value)
                except DecodeError:
                    continue  # the live agent skips such records too
                pending.add(env, part, offset, topic)
                if offset + 1 >= hi:
                    remaining.discard(key)
            if pending:
                yield pending
    finally:
        c.close()


def _replay_in_process(
    bootstrap: Cluster,
    index: IndexStore,
    todo: Todo,
    batch: int,
    on_progress: Callable[[int], None] | None,
) -> int:
    n = 0
    # One writer thread: batch k is inserted (chDB releases the GIL) while batch k+1 is
    # consumed and projected. At most one write is in flight and writes stay in log order.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-writer")
    inflight: tuple[Future[int], int] | None = None

    def settle() -> None:
        nonlocal inflight, n
        if inflight is not None:
            fut, count = inflight
            inflight = None
            fut.result()  # a failed write raises here
            n += count
            if on_progress:
                on_progress(count)

    try:
        for pending in _batches(bootstrap, todo, batch):
            settle()
            inflight = (writer.submit(index.write, pending), len(pending))
        settle()
    finally:
        writer.shutdown(wait=True)
    return n


@dataclass
class _Failed:
    """What went wrong in the projector process."""

    unavailable: bool
    text: str


@dataclass
class _ArrowFile:
    """An Arrow table handed over as an Arrow IPC file in shared memory (the parent maps it:
    no copy through a pipe, no pickling of the buffers)."""

    path: str


def _hand_over(prepared: Prepared, shm: str, name: str) -> Prepared:
    import pyarrow as pa

    for table, data in prepared.tables.items():
        if isinstance(data, pa.Table):
            path = os.path.join(shm, f"{name}-{table}.arrow")
            with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, data.schema) as w:
                w.write_table(data)
            prepared.tables[table] = _ArrowFile(path)
    return prepared


def _take_over(prepared: Prepared) -> list[str]:
    """The Arrow tables of ``prepared`` mapped from their files; the files' paths."""
    import pyarrow as pa

    paths = []
    for table, data in prepared.tables.items():
        if isinstance(data, _ArrowFile):
            prepared.tables[table] = pa.ipc.open_file(pa.memory_map(data.path)).read_all()
            paths.append(data.path)
    return paths


def _project(
    out: Connection, bootstrap: Cluster, todo: Todo, batch: int, layout: Layout, shm: str, name: str
) -> None:
    """The projector process: every batch of the log, prepared for insertion, to ``out``;
    then None (or a _Failed)."""
    try:
        for seq, pending in enumerate(_batches(bootstrap, todo, batch)):
            out.send(_hand_over(prepare(pending, layout), shm, f"{name}-{seq}"))
        out.send(None)
    except (KafkaException, Unavailable) as exc:
        out.send(_Failed(True, f"Kafka unreachable at {kafka.bootstrap_of(bootstrap)}: {exc}"))
    except Exception:  # noqa: BLE001 (reported to the parent, which raises it)
        out.send(_Failed(False, traceback.format_exc()))
    finally:
        out.close()


def _projector_main() -> None:
    """Entry of the projector process: its arguments pickled on stdin, the write end of the
    result pipe as argv[1]."""
    import gc

    # Its rows hold no reference cycles and it lives one replay: the collector's passes over
    # the growing batch (~10% of this process's CPU) find nothing to free.
    gc.disable()
    args = pickle.load(sys.stdin.buffer)
    _project(Connection(int(sys.argv[1]), readable=False), *args)


def _split(todo: Todo, k: int) -> list[Todo]:
    """``todo`` in at most ``k`` parts of whole partitions with about as many events each
    (largest first, to the part with the fewest)."""
    parts: list[Todo] = [{} for _ in range(min(k, len(todo)))]
    sizes = [0] * len(parts)
    for key, (lo, hi) in sorted(todo.items(), key=lambda kv: kv[1][0] - kv[1][1]):
        i = sizes.index(min(sizes))
        parts[i][key] = (lo, hi)
        sizes[i] += hi - lo
    return [p for p in parts if p]


def projector_count(todo: Todo, limit: int | None = None) -> int:
    """How many projector processes: the number up to ``limit`` (by default one more than the
    cores) whose split of whole partitions has the smallest largest part, the fewest among
    equals. A projector that runs out of partitions early leaves a core to the others for the
    rest of the replay: with the default 3 partitions, 2 projectors split them 2:1 and used
    ~1.75 of the 2 cores, 3 projectors ~1.93 (~+13% events/s, 300k log)."""
    limit = limit or max(2, (os.cpu_count() or 1) + 1)
    best, best_size = 1, sum(hi - lo for lo, hi in todo.values())
    for k in range(2, min(limit, len(todo)) + 1):
        size = max(sum(hi - lo for lo, hi in part.values()) for part in _split(todo, k))
        if size < best_size:
            best, best_size = k, size
    return best


def _replay_with_projector(
    bootstrap: Cluster,
    index: IndexStore,
    todo: Todo,
    batch: int,
    on_progress: Callable[[int], None] | None,
    projectors: int | None = None,
) -> int:
    """Projector processes, each reading whole partitions (so each partition's batches arrive
    in log order); their batches are written as they come."""
    import shutil
    import tempfile
    from multiprocessing.connection import wait

    shm = tempfile.mkdtemp(
        prefix="strata-replay-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    root = str(Path(__file__).parents[2])  # the folder holding strata/ (checkout or install)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen[bytes]] = []
    receivers: dict[Connection, subprocess.Popen[bytes]] = {}
    n = 0
    try:
        k = projectors or projector_count(todo)
        for i, part in enumerate(_split(todo, k)):
            # A plain child interpreter (not multiprocessing's spawn, which re-imports the
            # caller's main module; never fork a process that holds chDB).
            r, w = os.pipe()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from strata.processors.replay import _projector_main; _projector_main()",
                    str(w),
                ],
                stdin=subprocess.PIPE,
                pass_fds=(w,),
                cwd=root,
                env=env,
            )
            os.close(w)
            procs.append(proc)
            receivers[Connection(r, writable=False)] = proc
            assert proc.stdin is not None
            with proc.stdin:
                pickle.dump((bootstrap, part, batch, index.layout(), shm, f"p{i}"), proc.stdin)
        while receivers:
            for ready in wait(list(receivers)):
                receive = cast(Connection, ready)  # wait() answers with the objects it was given
                proc = receivers[receive]
                try:
                    prepared: Prepared | _Failed | None = receive.recv()
                except EOFError:
                    raise RuntimeError(
                        f"a replay projector process ended unexpectedly (exit code {proc.poll()})"
                    ) from None
                if prepared is None:
                    receive.close()
                    del receivers[receive]
                    continue
                if isinstance(prepared, _Failed):
                    if prepared.unavailable:
                        raise Unavailable(prepared.text)
                    raise RuntimeError(f"replay projector failed:\n{prepared.text}")
                files = _take_over(prepared)
                index.write_prepared(prepared)
                del prepared.tables  # unmapped before the files go
                for path in files:
                    os.unlink(path)
                n += prepared.events
                if on_progress:
                    on_progress(prepared.events)
    finally:
        for receive in receivers:
            receive.close()
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=30)  # each ends after its last batch
                except subprocess.TimeoutExpired:
                    proc.kill()  # only after a failure here
                    proc.wait()
        shutil.rmtree(shm, ignore_errors=True)
    return n
