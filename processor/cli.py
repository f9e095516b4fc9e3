"""`anomaly`: the command line of the processor, the trainer and their tools.

Failures the user can fix (a bad file, no broker, a missing model) print one line on
stderr and exit with status 2; only bugs produce a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import BaseModel, ValidationError

from processor.config import Settings, add_settings_flags, settings_from_args

KAFKA_FIELDS = ["bootstrap_servers", "kafka_config", "log_level", "log_json"]
TOPIC_FIELDS = ["input_topic", "scored_topic", "alert_topic", "dead_letter_topic", "model_topic"]
STORE_FIELDS = ["model_store", "model_name"]


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def _add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                     skip: Sequence[str] = ()) -> None:
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        about = f"{info.description}; " if info.description else ""
        parser.add_argument("--" + name.replace("_", "-"), dest=f"cfg_{name}", default=None,
                            metavar="VALUE", help=f"{about}default {info.default!r}")


def _model_from_args(model: type[BaseModel], args: argparse.Namespace,
                     **extra: object) -> BaseModel:
    given = {k.removeprefix("cfg_"): v for k, v in vars(args).items()
             if k.startswith("cfg_") and v is not None}
    return model(**{**given, **extra})


def _configure_logs(settings: Settings) -> None:
    from processor import logs

    logs.configure(settings.log_level, settings.log_json)


# -- commands --------------------------------------------------------------------------

def cmd_broker(args: argparse.Namespace) -> int:
    from processor.localbroker import cli

    return cli(args.broker_args)


def cmd_train(args: argparse.Namespace) -> int:
    from processor.train_job import run_training

    settings = settings_from_args(args)
    _configure_logs(settings)
    return run_training(args, settings)


def cmd_run(args: argparse.Namespace) -> int:
    import structlog

    from processor.network import set_inference_threads
    from processor.stream.app import Processor

    settings = settings_from_args(args)
    _configure_logs(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = set_inference_threads(settings.inference_threads)
    structlog.get_logger(__name__).info("inference_threads", threads=threads)
    Processor(settings, stop).run()
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from processor.detect_job import run_detect

    settings = settings_from_args(args)
    _configure_logs(settings)
    return run_detect(args)


def cmd_plot(args: argparse.Namespace) -> int:
    from processor.plot_job import run_plot

    settings = settings_from_args(args)
    _configure_logs(settings)
    return run_plot(args, settings)


def cmd_demo(args: argparse.Namespace) -> int:
    from processor.demo import run_demo

    settings = settings_from_args(args)
    _configure_logs(settings)
    return run_demo(args, settings)


def cmd_bench(args: argparse.Namespace) -> int:
    from processor.bench import run_bench

    settings = settings_from_args(args)
    _configure_logs(settings)
    return run_bench(args, settings)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from processor.evaluate import run_evaluate

    settings = settings_from_args(args)
    if args.setting_log_level is None and "ANOMALY_LOG_LEVEL" not in os.environ:
        # Hundreds of trainings log every epoch; the progress lines are what matters here.
        settings = settings.model_copy(update={"log_level": "WARNING"})
    _configure_logs(settings)
    return run_evaluate(args)


def cmd_rollback(args: argparse.Namespace) -> int:
    from processor.train_job import run_rollback

    settings = settings_from_args(args)
    _configure_logs(settings)
    return run_rollback(args, settings)


def cmd_versions(args: argparse.Namespace) -> int:
    from processor.model_store import list_versions, read_metadata

    settings = settings_from_args(args)
    versions = list_versions(settings.model_store, settings.model_name)
    if not versions:
        print(f"no versions of {settings.model_name!r} in {settings.model_store}")
        return 0
    for path in versions:
        md = read_metadata(path)
        metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in md.metrics.items() if v is not None)
        print(f"{md.version}  window={md.window} keys={len(md.profiles)} "
              f"threshold={md.threshold:.4g} ({md.threshold_method})  {metrics}")
    return 0


# -- parser ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from processor.train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="anomaly",
        description="LSTM prediction-error anomaly detection for series on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="start, stop or check the local single-node Kafka broker")
    p.add_argument("broker_args", nargs=argparse.REMAINDER,
                   help="start|stop|status [--port N] [--fresh]")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("train", help="train a model version from a CSV or the input topic")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", type=Path, help="CSV with timestamp,value[,label]")
    src.add_argument("--from-topic", action="store_true",
                     help="read the input topic (all keys) over --since/--until")
    p.add_argument("--labels", type=Path, help="NAB windows JSON (or a list of [start, end])")
    p.add_argument("--key", help="series key of the CSV (default: file name without .csv)")
    p.add_argument("--rows", type=_above(0), default=None,
                   help="use only the first rows: a count, or a fraction below 1")
    p.add_argument("--since", help="topic: start time (ISO-8601 or epoch ms)")
    p.add_argument("--until", help="topic: end time (ISO-8601 or epoch ms)")
    p.add_argument("--since-hours", type=_above(0),
                   help="topic: start this many hours before now (for scheduled retraining)")
    p.add_argument("--no-announce", action="store_true",
                   help="write the version to the store but do not announce it on Kafka "
                   "(and skip the comparison with the current version)")
    p.add_argument("--force", action="store_true",
                   help="publish even when worse than the current version on the same data")
    _add_model_flags(p, TrainConfig, skip=["name", "verbose"])
    add_settings_flags(p, KAFKA_FIELDS + TOPIC_FIELDS + STORE_FIELDS + ["partitions"])
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run the stream processor until SIGTERM")
    add_settings_flags(p, list(Settings.model_fields))
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("detect", help="train on a CSV and score it offline (no broker)")
    p.add_argument("csv", type=Path)
    p.add_argument("--labels", type=Path, help="NAB windows JSON (or a list of [start, end])")
    p.add_argument("--key", help="series key (default: file name without .csv)")
    p.add_argument("--out-dir", type=Path, default=Path("out/detect"))
    _add_model_flags(p, TrainConfig, skip=["name", "verbose"])
    add_settings_flags(p, ["log_level", "log_json"])
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("plot", help="plot scored records from a file or the scored topic")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="scored records (.jsonl or .csv)")
    src.add_argument("--from-topic", action="store_true", help="read the scored topic")
    p.add_argument("--key", help="series to plot (needed when there are several)")
    p.add_argument("--labels", type=Path, help="NAB windows JSON to shade")
    p.add_argument("--labels-for", type=Path,
                   help="CSV name to look up in a NAB windows dict (default: the key + .csv)")
    p.add_argument("--out", type=Path, default=Path("out/plot.png"))
    add_settings_flags(p, KAFKA_FIELDS + TOPIC_FIELDS + STORE_FIELDS)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="the whole pipeline on a real series through a local broker")
    p.add_argument("--csv", type=Path, default=None,
                   help="series to stream (default: NAB machine_temperature_system_failure)")
    p.add_argument("--labels", type=Path, default=None, help="NAB windows JSON")
    p.add_argument("--train-rows", type=_above(0), default=0.4,
                   help="first rows to train on: a fraction below 1 or a count")
    p.add_argument("--out-dir", type=Path, default=Path("out/demo"))
    p.add_argument("--external-broker", action="store_true",
                   help="use --bootstrap-servers as is instead of starting the local broker")
    _add_model_flags(p, TrainConfig, skip=["name", "verbose"])
    add_settings_flags(p, [*KAFKA_FIELDS, "partitions"])
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="measure naive, batched and end-to-end throughput, "
                       "latency and memory per key")
    p.add_argument("--keys", type=_at_least(1), default=1000)
    p.add_argument("--records", type=_at_least(1), default=300_000,
                   help="end-to-end input records (after each key's first window)")
    p.add_argument("--partitions", type=_at_least(1), default=4)
    p.add_argument("--batch", type=_at_least(1), default=4096,
                   help="processor batch_max_records")
    p.add_argument("--window", type=_at_least(1), default=50)
    p.add_argument("--units", type=_at_least(1), default=64)
    p.add_argument("--season", type=_season, default="day",
                   help="the model's season ('day': 288 rows of the 5-minute series, 'none', "
                   "or rows)")
    p.add_argument("--naive-seconds", type=_above(0), default=10.0)
    p.add_argument("--inference-seconds", type=_above(0), default=3.0)
    p.add_argument("--latency-seconds", type=_above(0), default=20.0)
    p.add_argument("--memory-keys", type=_at_least(1), nargs="+",
                   default=[1000, 100_000, 1_000_000],
                   help="key counts to hold in memory (two or more, different)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput.json"))
    p.add_argument("--out-dir", type=Path, default=Path("out/bench"))
    p.add_argument("--external-broker", action="store_true",
                   help="use --bootstrap-servers as is instead of starting the local broker")
    p.add_argument("--drains", type=_at_least(1), default=None,
                   help="only the end-to-end drain, this many times, with the processor "
                   "threads' CPU shares; writes no JSON")
    p.add_argument("--ab", metavar="ANOMALY_SETTING=VALUE", type=_ab_setting, default=None,
                   help="with --drains: alternate each drain with the processor run under "
                   "this changed setting, and compare")
    add_settings_flags(p, KAFKA_FIELDS)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("evaluate", help="run the NAB protocol on a folder in NAB's layout")
    p.add_argument("--nab-dir", type=Path, default=_default_nab_dir(),
                   help="folder with data/<category>/*.csv, labels/, config/")
    p.add_argument("--files", nargs="+", help="subset, e.g. realKnownCause/nyc_taxi.csv")
    p.add_argument("--window", type=_at_least(2, high=5000), default=30,
                   help="rows per window, capped per series at a quarter of its "
                   "probationary rows")
    p.add_argument("--units", type=_at_least(1, high=1024), default=32)
    p.add_argument("--epochs", type=_at_least(1, high=10_000), default=30)
    p.add_argument("--steps", type=_at_least(1), default=1,
                   help="values predicted ahead (l); above 1 each row is scored by its l errors")
    p.add_argument("--retrain", choices=["doubling", "none"], default="doubling")
    p.add_argument("--persistence", action="store_true",
                   help="score the persistence forecast's errors instead of the LSTM's "
                   "(a baseline: what the network adds)")
    p.add_argument("--relative", action="store_true",
                   help="the network sees each window relative to its last value and "
                   "predicts the change from it")
    p.add_argument("--season", type=_season, default="day",
                   help="seasonal lag in rows the network also reads: 'day' (one day at the "
                   "series' sampling interval, when its probationary rows allow), a number "
                   "of rows, or 'none'")
    p.add_argument("--reference-rows", type=_multiple_of(100, 100_000), default=1000,
                   help="the anomaly score's reference: the second largest deviation of "
                   "about this many recent rows (a multiple of 100)")
    p.add_argument("--peak-rows", type=_multiple_of(20, 20_000), default=200,
                   help="a peak is above every score of about this many previous rows "
                   "(a multiple of 20)")
    p.add_argument("--alert-score", type=_at_least(0.0, float, 0.999), default=0.5,
                   help="a peak above this anomaly score alerts; NAB scores the alerts "
                   "(0: every peak the quiet period lets through)")
    p.add_argument("--quiet-rows", type=_at_least(0, high=1_000_000), default=100,
                   help="rows after an alert in which a key does not alert again")
    p.add_argument("--needs-band", action="store_true",
                   help="alert only on rows the model itself flags (log-PD below its "
                   "threshold)")
    p.add_argument("--gap-reset-intervals", type=_at_least(0.0, float), default=24.0,
                   help="as the processor's setting: a gap this many sampling intervals long "
                   "restarts a window (0: never)")
    p.add_argument("--horizon", type=_at_least(0), default=0,
                   help="offline variant: fit the error Gaussian on the last N errors "
                   "(0: the trained one)")
    p.add_argument("--smooth", type=_at_least(1), default=1,
                   help="offline variant: average |z| over the last N rows")
    p.add_argument("--group", type=_at_least(0), default=0,
                   help="offline variant: a row counts only above the maximum of the "
                   "previous N rows")
    p.add_argument("--likelihood", type=_at_least(0), default=0,
                   help="offline variant: score how unusual the recent average score is "
                   "against the last N rows of scores (Numenta's anomaly likelihood; 0: off)")
    p.add_argument("--calibrate", type=_quantile, default=0.0,
                   help="offline variant: score |z| against this quantile of the key's "
                   "recent |z| (e.g. 0.999; 0: off)")
    p.add_argument("--calibrate-rows", type=_at_least(100), default=2000,
                   help="rows of recent errors for --calibrate")
    p.add_argument("--likelihood-avg", type=_at_least(1), default=10,
                   help="rows averaged into the recent score for --likelihood")
    p.add_argument("--sweep", action="store_true",
                   help="also score a grid of post-processing variants on the same errors")
    p.add_argument("--seed", type=_at_least(0, high=2**32 - 1), default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="summary JSON (default: <out-dir>/evaluate.json)")
    p.add_argument("--out-dir", type=Path, default=Path("out/nab"))
    add_settings_flags(p, ["log_level", "log_json"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("rollback", help="announce an earlier version again")
    p.add_argument("version", help="a version listed by `anomaly versions`")
    add_settings_flags(p, KAFKA_FIELDS + TOPIC_FIELDS + STORE_FIELDS + ["partitions"])
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("versions", help="list model versions in the store with their metrics")
    add_settings_flags(p, [*STORE_FIELDS, "log_level", "log_json"])
    p.set_defaults(func=cmd_versions)
    return parser


def _default_nab_dir() -> Path:
    from processor.demo import _nab_dir

    return _nab_dir()


def _ab_setting(text: str) -> str:
    """An argparse type: ANOMALY_<SETTING>=<VALUE>, naming a setting and a valid value."""
    name, sep, value = text.partition("=")
    field = name.removeprefix("ANOMALY_").lower()
    if not sep or not name.startswith("ANOMALY_") or field not in Settings.model_fields:
        raise argparse.ArgumentTypeError(
            f"expected ANOMALY_<SETTING>=<VALUE> naming a setting, got {text!r}")
    try:
        Settings.model_validate({field: value})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise argparse.ArgumentTypeError(f"{name}: {first['msg']}") from None
    return text


#: Upper bound on row counts and sizes given on the command line: far above any real
#: series, and below the sizes where numpy and pandas fail with overflow errors.
MAX_COUNT = 10**9


def _season(text: str) -> int | str:
    """'day', 'none' or a number of rows (at least 2)."""
    if text in ("day", "none"):
        return text
    try:
        return int(_at_least(2)(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: 'day', 'none' or a number of rows, at least 2") from None


def _multiple_of(step: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        n = int(_at_least(step, high=high)(text))
        if n % step:
            raise argparse.ArgumentTypeError(f"{text} is not a multiple of {step}")
        return n
    return parse


def _at_least(low: float, kind: type = int, high: float = MAX_COUNT) -> Callable[[str], Any]:
    """An argparse type: a number in [low, high] (argparse turns the error into one line)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}, got {text}")
        return value

    return parse


def _quantile(text: str) -> float:
    """An argparse type: 0 (off) or a quantile strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value == 0 or 0 < value < 1):
        raise argparse.ArgumentTypeError(f"must be 0 (off) or between 0 and 1, got {text}")
    return value


def _above(low: float) -> Callable[[str], float]:
    """An argparse type: a float strictly above `low`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not value > low:
            raise argparse.ArgumentTypeError(f"must be above {low:g}, got {text}")
        return value

    return parse


def _user_errors() -> tuple[type[BaseException], ...]:
    from confluent_kafka import KafkaException
    from pydantic_settings import SettingsError

    from processor.bench import BenchError
    from processor.dataset import DataError
    from processor.model_store import ModelStoreError
    from processor.stream.topic_reader import TopicReadError

    # OSError: a path that is a file where a directory is needed, and the like.
    return (UserError, BenchError, DataError, ModelStoreError, TopicReadError,
            KafkaException, ValidationError, SettingsError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"anomaly {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        raise


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors(include_url=False):
            # A union reports each member's complaint under a location ending in its
            # type; one message for the field says enough.
            loc = [str(p) for p in e["loc"] if not str(p).startswith(("literal[", "int"))]
            msg = str(e["msg"]).removeprefix("Value error, ")
            text = f"{'.'.join(loc)}: {msg}" if loc else msg
            if text not in parts:
                parts.append(text)
        return "invalid setting: " + "; ".join(parts)
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
