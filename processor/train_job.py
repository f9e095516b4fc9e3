"""`anomaly train`: read the data, train, store the version, announce it."""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import structlog
from confluent_kafka import KafkaException

from processor.champion import Verdict, judge
from processor.config import Settings
from processor.dataset import (
    DataError,
    Series,
    check_sorted,
    read_csv,
    read_windows,
    with_windows,
    writable_file,
)
from processor.model_store import ModelMetadata, save_version
from processor.train import TrainConfig, TrainOutcome, train, trainable
from schemas.records import DeadLetter, _to_epoch_ms

log = structlog.get_logger(__name__)


def parse_time(text: str | None) -> int | None:
    """ISO-8601 with a zone, or epoch milliseconds."""
    if text is None:
        return None
    try:
        return _to_epoch_ms(int(text) if text.lstrip("-").isdigit() else text)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def first_rows(series: Series, rows: float | None, flag: str = "--rows") -> Series:
    """`rows` below 1 is a fraction of the series, otherwise a row count (`flag`: the
    option it came from, for the error message)."""
    if rows is None:
        return series
    if rows <= 0:
        raise DataError(f"{flag} must be positive")
    if rows > 1 and rows != int(rows):
        raise DataError(f"{flag} {rows}: a fraction below 1 or a whole number of rows")
    n = int(len(series) * rows) if rows < 1 else int(rows)
    return series.slice(0, n)


def csv_series(path: Path, labels: Path | None, key: str | None) -> Series:
    if key is not None and not key.strip():
        raise DataError("--key is empty; leave it out to use the file name")
    series = read_csv(path, key=key)
    check_sorted(series.timestamps, path)
    if labels is not None:
        series = with_windows(series, read_windows(labels, path))
    return series


def topic_series(settings: Settings, since: str | None, until: str | None) -> list[Series]:
    """Every valid record of the input topic in the time range, grouped by key."""
    from processor.stream.codec import decode, latest_accepted_ms
    from processor.stream.topic_reader import read_range

    start, end = parse_time(since), parse_time(until)
    if start is not None and end is not None and start >= end:
        raise DataError(f"--since {since} is not before --until {until}")
    by_key: dict[str, list[tuple[int, float]]] = defaultdict(list)
    invalid = 0
    latest = latest_accepted_ms(settings.max_future_s)
    for raw in read_range(settings, settings.input_topic, start, end):
        item = decode(raw, settings.max_message_bytes, latest)
        if isinstance(item, DeadLetter):
            invalid += 1
            continue
        by_key[item.key].append((item.timestamp_ms, item.value))
    log.info("topic_read", topic=settings.input_topic, keys=len(by_key),
             records=sum(map(len, by_key.values())), invalid=invalid)
    if not by_key:
        raise DataError(f"no valid records in {settings.input_topic} for that time range")
    return [Series(k, np.array([t for t, _ in v], np.int64), np.array([x for _, x in v]))
            for k, v in by_key.items()]


def _check_broker(settings: Settings, from_topic: bool) -> None:
    from processor.stream.clients import check_broker

    try:
        check_broker(settings)
    except KafkaException as exc:
        fix = "" if from_topic else " or train with --no-announce"
        raise DataError(f"{exc.args[0]}; start one (`anomaly broker start`){fix}") from None


def _trainable(series: list[Series], cfg: TrainConfig) -> list[Series]:
    """The keys of the time range that can be trained on; the rest are logged."""
    kept, skipped = trainable(series, cfg)
    if skipped:
        log.warning("keys_skipped_too_short", keys=len(skipped),
                    examples=dict(sorted(skipped.items())[:20]),
                    note="scored with the default profile until a retraining has enough "
                    "of them")
    if not kept:
        longest = max(skipped.values())
        raise DataError(f"no key in the time range has enough rows to train on (the longest "
                        f"has {longest}; window {cfg.window} needs "
                        f"{4 * (cfg.window + cfg.steps - 1)})")
    return kept


def store_and_announce(outcome: TrainOutcome, settings: Settings, announce: bool) -> Path:
    path = save_version(settings.model_store, outcome.metadata, outcome.network)
    if announce:
        from processor.model_store import read_metadata
        from processor.stream.clients import ensure_topics
        from processor.stream.model_topic import announce as publish
        from processor.stream.model_topic import announcement_for

        try:
            ensure_topics(settings)
            publish(settings, announcement_for(read_metadata(path), path))
        except Exception as exc:
            raise DataError(f"version {outcome.metadata.version} was saved to {path} but not "
                            f"announced on {settings.bootstrap_servers} ({exc}); announce it "
                            "later, or use --no-announce") from exc
    return path


def print_outcome(metadata: ModelMetadata, path: Path) -> None:
    m = metadata.metrics
    print(f"model version {metadata.version} written to {path}")
    print(f"  threshold {metadata.threshold:.4f} on log-PD, chosen by {metadata.threshold_method}")
    print(f"  splits (windows): {metadata.splits}")
    if "test_precision" in m:
        print(f"  test: precision {m.get('test_precision')} recall {m.get('test_recall')} "
              f"F-beta {m.get('test_fbeta')} (tp {m.get('test_tp')}, fp {m.get('test_fp')}, "
              f"fn {m.get('test_fn')})")
    print(f"  test rows flagged: {m.get('test_flagged')} of {m.get('test_rows')}")


def run_training(args: argparse.Namespace, settings: Settings) -> int:
    cfg_fields = {k.removeprefix("cfg_"): v for k, v in vars(args).items()
                  if k.startswith("cfg_") and v is not None}
    cfg = TrainConfig(name=settings.model_name, **cfg_fields)
    if args.csv is not None and (args.since or args.until or args.since_hours is not None):
        raise DataError("--since, --until and --since-hours select records of the topic; "
                        "with --csv use --rows")
    writable_file(settings.model_store / settings.model_name / "probe", "the model")
    if args.from_topic or not args.no_announce:
        _check_broker(settings, from_topic=args.from_topic)
    if args.csv is not None:
        series = [first_rows(csv_series(args.csv, args.labels, args.key), args.rows)]
        source = str(args.csv)
    else:
        since = args.since
        if args.since_hours is not None:
            if args.since is not None:
                raise DataError("give --since or --since-hours, not both")
            since = str(int((time.time() - args.since_hours * 3600) * 1000))
        series = _trainable(topic_series(settings, since, args.until), cfg)
        source = f"kafka:{settings.input_topic}"
    outcome = train(series, cfg, source)
    if not args.no_announce:
        try:
            verdict = challenge(outcome, settings, force=args.force)
        except KafkaException as exc:  # the broker went away while training: keep the work
            store_and_announce(outcome, settings, announce=False)
            raise DataError(f"version {outcome.metadata.version} was saved to "
                            f"{settings.model_store} but not compared or announced "
                            f"({exc.args[0]}); announce it with `anomaly rollback "
                            f"{outcome.metadata.version}`") from None
        print(f"champion/challenger: {verdict.reason}")
        outcome.metadata.metrics.update(verdict.metrics())
        if not verdict.publish:
            print(f"not published: version {outcome.metadata.version} is worse than "
                  f"{verdict.champion_version} on the same recent data (--force publishes)")
            return 0
    path = store_and_announce(outcome, settings, announce=not args.no_announce)
    print_outcome(outcome.metadata, path)
    return 0


def current_version(settings: Settings) -> Path | None:
    """The version processors run now: the newest announcement, else the newest stored."""
    from processor.model_store import latest_version
    from processor.stream.clients import ensure_topics
    from processor.stream.model_topic import ModelWatcher

    ensure_topics(settings)
    watcher = ModelWatcher(settings)
    try:
        ann = watcher.catch_up()
    finally:
        watcher.close()
    if ann is not None:
        path = Path(ann.artifact_uri)
        return path if path.exists() else settings.model_store / ann.name / ann.version
    return latest_version(settings.model_store, settings.model_name)


def challenge(outcome: TrainOutcome, settings: Settings, force: bool) -> Verdict:
    """Compare the new version with the current one on the data it held out."""
    from processor.detect import loaded_from_outcome
    from processor.model_store import load_version

    path = current_version(settings)
    champion = load_version(path) if path is not None else None
    challenger = loaded_from_outcome(outcome, Path("."))
    return judge(challenger, champion, outcome.per_key, force=force)


def run_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Announce an earlier stored version again: processors switch back to it."""
    from processor.model_store import read_metadata
    from processor.stream.clients import ensure_topics
    from processor.stream.model_topic import announce, announcement_for

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.version):
        raise DataError(f"{args.version!r} is not a version name (see `anomaly versions`)")
    path = settings.model_store / settings.model_name / args.version
    metadata = read_metadata(path)
    ensure_topics(settings)
    announce(settings, announcement_for(metadata, path))
    print(f"announced {metadata.version} again on {settings.model_topic}")
    return 0
