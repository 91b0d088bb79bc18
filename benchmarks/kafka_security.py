"""The cost of Kafka SASL_SSL (SCRAM-SHA-512, TLS, ACLs) on the log's writes: the same embedded
broker (stack/kafka/broker.py, its defaults: one node, a flush per message) started twice in
the same run, plaintext and sasl_ssl, and the ingest relay's producer profile writing 2 KB
records to the study topic, as the ingest principal under the ACLs on the secured one.

    python -m benchmarks.kafka_security [--records 20000] [--single 300] [--repeat 3]

Per round and mode: a burst of ``--records`` (records/s, delivery latency p50/p99), then
``--single`` records one at a time, each flushed (the round trip of one acknowledged write),
and the time a new producer takes to its first acknowledged record (connection, TLS handshake
and SCRAM exchange included). Rounds alternate plaintext, sasl_ssl, ... so that load from
elsewhere on the machine falls on both alike; the table gives the median of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    git_revision,
    log,
    machine,
    percentile,
    table,
    write_json,
    write_rounds,
)

MODES = ("plaintext", "sasl_ssl")


def start(parent: Path, mode: str) -> Any:
    from strata.common import kafka
    from strata.common.settings import Settings
    from strata.stack.kafka import broker, security
    from strata.stack.procs import free_port

    s = Settings(
        home=parent / mode,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        kafka_security=mode,
        node_name="bench",
    )
    broker.start(s)
    broker.wait_ready(s, 120)
    if security.enabled(s):
        security.apply(s)
    kafka.ensure_topics(security.as_principal(s, security.ADMIN))
    return s


def round_of(s: Any, records: int, single: int) -> dict[str, float]:
    from strata.common import kafka
    from strata.stack.kafka import security

    writer = security.as_principal(s, security.INGEST)
    t0 = time.perf_counter()
    p = kafka.producer(writer, "relay", "bench")
    first_write = write_rounds(p, s.study_topic, 0, 1)  # a new client's first record
    first = time.perf_counter() - t0
    assert first_write.single, "the first record was not acknowledged"
    r = write_rounds(p, s.study_topic, records, single)
    burst, burst_s, one = r.burst, r.burst_seconds, r.single
    return {
        "records_per_s": len(burst) / burst_s,
        "delivery_p50_ms": percentile(burst, 50) * 1000,
        "delivery_p99_ms": percentile(burst, 99) * 1000,
        "single_p50_ms": percentile(one, 50) * 1000,
        "single_p99_ms": percentile(one, 99) * 1000,
        "first_record_ms": first * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=20000, help="records per burst")
    ap.add_argument("--single", type=int, default=300, help="records written one at a time")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per mode (alternating)")
    args = ap.parse_args(argv)
    from strata.stack.kafka import broker

    with tempfile.TemporaryDirectory(prefix="strata-bench-kafka-sec-") as tmp:
        brokers: dict[str, Any] = {}
        try:
            for m in MODES:
                log(f"starting the {m} broker")
                brokers[m] = start(Path(tmp), m)
            rounds: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for r in range(args.repeat):
                for m in MODES:
                    res = round_of(brokers[m], args.records, args.single)
                    log(f"round {r + 1} {m}: {res['records_per_s']:.0f} records/s")
                    rounds[m].append(res)
        finally:
            for s in brokers.values():
                broker.stop(s)
    keys = list(rounds[MODES[0]][0])
    med = {m: {k: statistics.median(x[k] for x in rounds[m]) for k in keys} for m in MODES}
    rows = [
        [k, f"{med['plaintext'][k]:.1f}", f"{med['sasl_ssl'][k]:.1f}",
         f"{(med['sasl_ssl'][k] / med['plaintext'][k] - 1) * 100:+.0f}%"]
        for k in keys
    ]  # fmt: skip
    print(table(["measure (median of rounds)", "plaintext", "sasl_ssl", "change"], rows))
    write_json(
        RESULTS_DIR / f"kafka_security-{datetime.now(UTC):%Y%m%d-%H%M%S}.json",
        {
            "benchmark": "kafka_security",
            "args": vars(args),
            "git": git_revision(),
            "machine": machine(),
            "rounds": rounds,
            "median": med,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
