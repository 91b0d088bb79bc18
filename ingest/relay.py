"""The relay: publishes the outbox to Kafka, in order, exactly once.

- Order: records are produced in outbox order by one idempotent producer (librdkafka keeps
  per-partition order with idempotence on), and marked published only once acknowledged.
- Durability: acks=all; a record stays pending while Kafka is down and the relay keeps trying.
- Exactly once across a crash: a record published but not yet marked (crash in between) is found
  again at start-up by scanning the topic tail from just before its creation time for its
  event id, and marked without being produced twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ingest.outbox import Outbox, Pending
from proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        outbox: Outbox,
        bootstrap: str,
        on_published: Callable[[int], None] | None = None,
        batch: int = 500,
        idle_wait: float = 0.002,
    ) -> None:
        self.outbox = outbox
        self.bootstrap = bootstrap
        self.batch = batch
        self.idle_wait = idle_wait
        self.on_published = on_published
        self.kafka_ok = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,  # implies acks=all and ordered retries
                "acks": "all",
                "linger.ms": 2,
                "compression.type": "lz4",
                "message.timeout.ms": 0,  # never give up: the record is ours to deliver
                "socket.nagle.disable": True,
                "reconnect.backoff.max.ms": 1000,
            }
        )

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

        for r in rows:
            while True:
                try:
                    self._producer.produce(
                        r.topic, key=r.key.encode(), value=r.value, on_delivery=cb(r.seq)
                    )
                    break
                except BufferError:
                    self._producer.poll(0.1)
        waited_since = time.monotonic()
        while len(acked) < len(rows) and not self._stop.is_set():
            self._producer.poll(0.05)
            # Asking the broker for metadata on every wait was a request per batch: only
            # when acknowledgements are late is it worth knowing whether Kafka is up.
            if len(acked) < len(rows) and time.monotonic() - waited_since > 1.0:
                self.kafka_ok = self._broker_up()
        failed = [(seq, err) for seq, err in acked.items() if err is not None]
        # Mark in order only up to the first failure, so order is kept on the retry.
        ok_prefix = []
        for r in rows:
            if acked.get(r.seq, "missing") is None:
                ok_prefix.append(r.seq)
            else:
                break
        self.outbox.mark_published(ok_prefix)
        if ok_prefix:
            self.kafka_ok = True
            if self.on_published:
                self.on_published(len(ok_prefix))
        for seq, err in failed:
            log.error("relay: event seq=%d not delivered (%s); will retry", seq, err)
        return True

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
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "strata-relay-recovery",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
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
                _lo, hi = c.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=30
                )
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
