"""The relay: publishes the outbox to Kafka, in order, exactly once.

- Order: records are produced in outbox order by one idempotent producer (librdkafka keeps
  per-partition order with idempotence on), and marked published only once acknowledged.
- Durability: acks=all; a record stays pending while Kafka is down and the relay keeps trying.
- Exactly once across a crash: a record published but not yet marked (crash in between) is found
  again at start-up by scanning the topic tail from just before its creation time for its
  event id, and marked without being produced twice.
- Poison: an event Kafka refuses for good (``PERMANENT``: too large for the broker, an invalid
  record) is produced once more on its own (a refused batch fails every record in it); refused
  again, it is set aside in the outbox with the error (``strata outbox redrive`` re-queues it)
  and never blocks the events after it. Events refused with a batch and published on their own
  land after the ones behind them that were already acknowledged: the only case where the log
  order differs from the outbox order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from strata.common import kafka
from strata.ingest.outbox import Outbox, Pending
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

# Produce errors that retrying the same record cannot fix: the record is the problem.
PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_TIMESTAMP,
    }
)


def is_permanent(err: KafkaError | None) -> bool:
    return err is not None and err.code() in PERMANENT


class Relay:
    def __init__(
        self,
        outbox: Outbox,
        bootstrap: kafka.Cluster,
        on_published: Callable[[int], None] | None = None,
        batch: int = 500,
        idle_wait: float = 0.002,
        on_set_aside: Callable[[], None] | None = None,
        producer_factory: Callable[[dict[str, Any]], Any] = kafka.new_producer,
    ) -> None:
        self.outbox = outbox
        self.bootstrap = bootstrap
        self.batch = batch
        self.idle_wait = idle_wait
        self.on_published = on_published
        self.on_set_aside = on_set_aside
        self.kafka_ok = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._producer_factory = producer_factory
        self._producer = self._new_producer()

    def _new_producer(self) -> Any:
        # The "relay" profile: idempotent (acks=all, ordered retries), never gives up on a
        # record (message.timeout.ms 0: the record is ours to deliver), lz4, linger 2 ms.
        return self._producer_factory(kafka.producer_config(self.bootstrap, "relay"))

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, drain_timeout: float = 10.0) -> None:
        deadline = time.monotonic() + drain_timeout
        while self.outbox.depth() and time.monotonic() < deadline and self.kafka_ok:
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=drain_timeout)

    # ------------------------------------------------------------------ internals
    def _run(self) -> None:
        recovered = False
        while not self._stop.is_set():
            try:
                if not recovered:
                    self._recover()
                    recovered = True
                if not self._publish_batch():
                    self._wake.wait(self.idle_wait)
                    self._wake.clear()
            except Exception as exc:  # never die: log, back off, retry
                self.kafka_ok = False
                log.error("relay: %s", exc)
                self._stop.wait(1.0)

    def _publish_batch(self) -> bool:
        rows = self.outbox.pending(self.batch)
        if not rows:
            return False
        acked: dict[int, KafkaError | None] = {}

        def cb(seq: int) -> Callable[[KafkaError | None, object], None]:
            def done(err: KafkaError | None, _msg: object) -> None:
                acked[seq] = err

            return done

        produced: list[Pending] = []
        for r in rows:
            err = self._produce(r, cb(r.seq))
            if err is None:
                produced.append(r)
            else:  # refused before leaving: the record itself is the problem
                self._set_aside(r, err)
        waited_since = time.monotonic()
        while len(acked) < len(produced) and not self._stop.is_set():
            self._producer.poll(0.05)
            # Asking the broker for metadata on every wait was a request per batch: only
            # when acknowledgements are late is it worth knowing whether Kafka is up.
            if len(acked) < len(produced) and time.monotonic() - waited_since > 1.0:
                self.kafka_ok = self._broker_up()
        # Every acknowledged record is in Kafka: mark it (re-producing it would duplicate it).
        # With message.timeout.ms=0 a record fails only when Kafka refuses it for good (or the
        # producer failed fatally); until then the wait above keeps the order.
        ok = [r.seq for r in produced if r.seq in acked and acked[r.seq] is None]
        self.outbox.mark_published(ok)
        published = len(ok)
        for r in produced:
            err = acked.get(r.seq)
            if err is None:
                continue
            if err.fatal():
                log.error("relay: producer failed fatally (%s); starting a new one", err)
                self._producer.flush(5)
                self._producer = self._new_producer()
                break
            if not is_permanent(err):
                log.error("relay: event seq=%d not delivered (%s); will retry", r.seq, err)
                break
            # A refused batch fails every record in it: try this one on its own.
            alone = self._produce_alone(r)
            if alone is None:
                self.outbox.mark_published([r.seq])
                published += 1
            elif is_permanent(alone):
                self._set_aside(r, alone)
            else:
                log.error("relay: event seq=%d not delivered (%s); will retry", r.seq, alone)
                break
        if published:
            self.kafka_ok = True
            if self.on_published:
                self.on_published(published)
        return True

    def _produce(self, r: Pending, on_delivery: Callable[..., None]) -> KafkaError | None:
        """Hand one record to the producer; the error when it refuses it for good at once
        (e.g. larger than the producer's message.max.bytes)."""
        while True:
            try:
                self._producer.produce(
                    r.topic, key=r.key.encode(), value=r.value, on_delivery=on_delivery
                )
                return None
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is not None and is_permanent(err):
                    return err
                raise

    def _produce_alone(self, r: Pending) -> KafkaError | None:
        got: list[KafkaError | None] = []
        err = self._produce(r, lambda e, _m: got.append(e))
        if err is not None:
            return err
        while not got and not self._stop.is_set():
            self._producer.poll(0.05)
        return got[0] if got else KafkaError(KafkaError._DESTROY)

    def _set_aside(self, r: Pending, err: KafkaError) -> None:
        error = f"{err.name()}: {err.str()}"
        if self.outbox.set_aside(r.seq, error):
            log.error(
                "relay: event seq=%d id=%s (%d bytes) set aside: %s; the events after it go on"
                " (re-drive with 'strata outbox redrive')",
                r.seq,
                r.event_id,
                len(r.value or b""),
                error,
            )
            if self.on_set_aside:
                self.on_set_aside()

    def _broker_up(self) -> bool:
        try:
            md = self._producer.list_topics(timeout=0.5)
            return bool(md.brokers)
        except KafkaException:
            return False

    def _recover(self) -> None:
        """Mark records already in Kafka (published, crash before marking) as published."""
        rows = self.outbox.pending(100_000)
        if not rows:
            return
        found = self._scan_for(rows)
        if found:
            log.warning(
                "relay: %d outbox records were already in Kafka; not re-publishing", len(found)
            )
            self.outbox.mark_published([r.seq for r in rows if r.event_id in found])

    def _scan_for(self, rows: list[Pending]) -> set[str]:
        wanted = {r.event_id for r in rows}
        since = min(r.created_ms for r in rows) - 60_000
        c = kafka.consumer(
            self.bootstrap,
            "strata-relay-recovery",
            "relay-recovery",
            {"enable.partition.eof": True},
        )
        found: set[str] = set()
        try:
            topics = sorted({r.topic for r in rows})
            md = c.list_topics(timeout=30)
            tps = [TopicPartition(t, p, since) for t in topics for p in md.topics[t].partitions]
            starts = c.offsets_for_times(tps, timeout=30)
            ends: dict[tuple[str | None, int | None], int] = {}
            assign = []
            for tp in starts:
                hi = kafka.end_offset(c, TopicPartition(tp.topic, tp.partition))
                start = tp.offset if tp.offset >= 0 else hi
                if start < hi:
                    ends[(tp.topic, tp.partition)] = hi
                    assign.append(TopicPartition(tp.topic, tp.partition, start))
            if not assign:
                return found
            c.assign(assign)
            remaining = set(ends)
            while remaining:
                msg = c.poll(1.0)
                if msg is None:
                    continue
                key = (msg.topic(), msg.partition())
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(key)
                    continue
                env = pb.Envelope()
                try:
                    env.ParseFromString(msg.value() or b"")
                    if env.event_id in wanted:
                        found.add(env.event_id)
                except Exception:
                    pass
                if (msg.offset() or 0) + 1 >= ends[key]:
                    remaining.discard(key)
        finally:
            c.close()
        return found
