"""`anomaly demo`: the whole pipeline on a real labelled series, end to end.

Starts the local broker, creates a fresh set of topics, trains on the first part of the
series, starts `anomaly run` as its own process, streams the rest of the series to the
input topic as a producer would, waits until every record is accounted for (scored or
dead-lettered), stops the processor with SIGTERM and reports what happened.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import structlog
from confluent_kafka import Consumer, Producer

from processor.config import Settings
from processor.dataset import DataError, Series, read_windows, writable_file
from processor.detect import windows_hit, write_scored_jsonl
from processor.detect_job import plot_records
from processor.model_store import read_metadata
from processor.stream.clients import base_config, ensure_topics, producer_config
from processor.stream.launch import start_processor, stop_processor, with_run_topics
from processor.train import TrainConfig, train
from processor.train_job import csv_series, first_rows, store_and_announce
from schemas.records import DeadLetter, ScoredRecord, ms_to_datetime

log = structlog.get_logger(__name__)

DEFAULT_SERIES = "realKnownCause/machine_temperature_system_failure.csv"
#: Waiting longer than this for the processor to account for every record is a failure.
DRAIN_TIMEOUT_S = 300


def _nab_dir() -> Path:
    env = os.environ.get("NAB_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[1]
    return here.parent / "shared" / "data" / "nab"


def _defaults(args: argparse.Namespace) -> tuple[Path, Path | None]:
    if args.csv is not None:
        return args.csv, args.labels
    nab = _nab_dir()
    csv = nab / "data" / DEFAULT_SERIES
    if not csv.exists():
        raise DataError(f"default series not found at {csv}; pass --csv (and NAB_DATA_DIR)")
    return csv, args.labels or nab / "labels" / "combined_windows.json"


def produce_series(settings: Settings, series: Series) -> int:
    """Publish each row as an input record keyed by the series key; return the count."""
    producer = Producer(producer_config(settings))
    key = series.key.encode()
    for ts, value in zip(series.timestamps.tolist(), series.values.tolist(), strict=True):
        payload = {"key": series.key, "timestamp": ms_to_datetime(ts).isoformat(),
                   "value": value}
        while True:
            try:
                producer.produce(settings.input_topic, json.dumps(payload).encode(), key=key,
                                 timestamp=int(ts))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60):
        raise DataError("not every input record was delivered to the broker")
    return len(series)


def drain(settings: Settings, expected: int, proc: subprocess.Popen[bytes]
          ) -> tuple[list[ScoredRecord], list[DeadLetter], int]:
    """Read scored, dead-letter and alert topics until `expected` inputs are accounted for."""
    consumer = Consumer({**base_config(settings), "group.id": f"demo-reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.subscribe([settings.scored_topic, settings.dead_letter_topic, settings.alert_topic])
    scored: list[ScoredRecord] = []
    dead: list[DeadLetter] = []
    alerts = 0
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    last_print = time.monotonic()  # the first report after 5 s, not a "0 of n" at once
    try:
        while len(scored) + len(dead) < expected:
            if time.monotonic() > deadline:
                raise DataError(f"timed out: {len(scored) + len(dead)} of {expected} records "
                                "accounted for")
            if proc.poll() is not None:
                raise DataError(f"the processor exited early with status {proc.returncode}")
            for msg in consumer.consume(1000, timeout=0.5):
                value = msg.value()
                if msg.error() or value is None:
                    continue
                if msg.topic() == settings.scored_topic:
                    scored.append(ScoredRecord.model_validate_json(value))
                elif msg.topic() == settings.dead_letter_topic:
                    dead.append(DeadLetter.model_validate_json(value))
                else:
                    alerts += 1
            if time.monotonic() - last_print > 5:
                done = len(scored) + len(dead)
                print(f"  ... {done} of {expected} records processed" if done else
                      "  ... waiting for the processor to load the model and start",
                      flush=True)
                last_print = time.monotonic()
        # Alerts trail their scored records by at most one batch.
        end = time.monotonic() + 3
        while time.monotonic() < end and alerts < sum(r.anomaly for r in scored):
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.topic() == settings.alert_topic and not msg.error():
                    alerts += 1
    finally:
        consumer.close()
    return scored, dead, alerts


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    started = time.monotonic()
    csv_path, labels_path = _defaults(args)
    # The input is checked before anything is started or created on the broker.
    series = csv_series(csv_path, labels_path, None)
    windows = read_windows(labels_path, csv_path) if labels_path else []
    head = first_rows(series, args.train_rows, "--train-rows")
    rest = series.slice(len(head))
    if len(rest) == 0:
        raise DataError("--train-rows leaves nothing to stream")
    for name in ("scored.jsonl", "demo.png", "processor.log", "models/demo/probe"):
        writable_file(args.out_dir / name, "the demo's output")
    cfg_fields = {k.removeprefix("cfg_"): v for k, v in vars(args).items()
                  if k.startswith("cfg_") and v is not None}
    # Checked here, before anything is started or created on the broker.
    cfg = TrainConfig(name="demo", **{"train_frac": 0.4, "val_frac": 0.35, **cfg_fields})
    if not args.external_broker:
        from processor.localbroker import start

        print("starting the local Kafka broker ...", flush=True)
        settings = settings.model_copy(update={"bootstrap_servers": start()})
    run_id = time.strftime("%Y%m%d%H%M%S")
    settings = with_run_topics(settings, f"demo-{run_id}").model_copy(update={
        "model_store": args.out_dir / "models", "model_name": "demo"})
    ensure_topics(settings)

    print(f"training on the first {len(head)} rows of {csv_path.name} "
          f"({ms_to_datetime(int(head.timestamps[0])):%Y-%m-%d} .. "
          f"{ms_to_datetime(int(head.timestamps[-1])):%Y-%m-%d}) ...", flush=True)
    outcome = train([head], cfg, str(csv_path))
    version_dir = store_and_announce(outcome, settings, announce=True)
    metadata = read_metadata(version_dir)
    print(f"model {metadata.version}: threshold {metadata.threshold:.3f} "
          f"({metadata.threshold_method})", flush=True)

    log_path = args.out_dir / "processor.log"
    log_path.unlink(missing_ok=True)
    proc = start_processor(settings, log_path)
    try:
        print(f"processor started (pid {proc.pid}, log {log_path}); streaming "
              f"{len(rest)} records to {settings.input_topic} ...", flush=True)
        produced = produce_series(settings, rest)
        scored, dead, alerts = drain(settings, produced, proc)
    finally:
        stop_processor(proc)
    scored.sort(key=lambda r: r.timestamp)
    jsonl = write_scored_jsonl(scored, args.out_dir / "scored.jsonl")
    png = plot_records(scored, metadata, series.key, windows, args.out_dir / "demo.png",
                       alert_score=settings.alert_score)
    stream_windows = [w for w in windows if w[1] >= int(rest.timestamps[0])]
    summary(produced, scored, dead, alerts, metadata.version, stream_windows, proc.returncode)
    print(f"scored records: {jsonl}")
    print(f"plot: {png}")
    print(f"total time: {time.monotonic() - started:.0f} s")
    return 0 if proc.returncode == 0 else 1


def _breakdown(counts: Counter[str]) -> str:
    return f"  ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""


def summary(produced: int, scored: list[ScoredRecord], dead: list[DeadLetter], alerts: int,
            version: str, windows: list[tuple[int, int]], exit_code: int | None) -> None:
    statuses = Counter(r.status.value for r in scored)
    reasons = Counter(d.reason.value for d in dead)
    print()
    print("=== summary ===")
    print(f"records in:    {produced}")
    print(f"scored:        {len(scored)}{_breakdown(statuses)}")
    print(f"outside band:  {sum(r.anomaly for r in scored)}")
    print(f"alerts:        {alerts}  (one per incident)")
    print(f"dead letters:  {len(dead)}{_breakdown(reasons)}")
    print(f"model version: {version}")
    if windows:
        print(f"labelled failure windows in the streamed part alerted: "
              f"{windows_hit(scored, windows)} of {len(windows)}")
        inside = sum(r.alert and any(s <= int(r.timestamp.timestamp() * 1000) <= e
                                     for s, e in windows) for r in scored)
        total = sum(r.alert for r in scored)
        if total:
            print(f"alerts inside labelled windows: {inside} of {total}")
    print(f"processor exit status: {exit_code}")
