"""`anomaly detect`: the answer for someone who just has a file."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from processor.calibration import ScoreRule
from processor.config import Settings
from processor.dataset import Windows, read_windows, writable_file
from processor.detect import (
    detect,
    windows_hit,
    write_scored_csv,
)
from processor.engine import ALERT_SCORE
from processor.model_store import ModelMetadata
from processor.train import TrainConfig
from processor.train_job import csv_series, print_outcome
from schemas.records import ScoredRecord


def plot_records(records: Sequence[ScoredRecord], metadata: ModelMetadata, key: str,
                 windows: Windows, out: Path, title: str | None = None,
                 alert_score: float = ALERT_SCORE) -> Path:
    from processor.plot import frame_from_records, render

    profile = metadata.profiles.get(key, metadata.default_profile)
    # An l-step threshold bounds the error vector, not the one-step error: the histogram
    # then reads its threshold edges off the bands instead of a one-step Gaussian.
    gaussian = (profile.error_mean, profile.error_var) if profile.steps == 1 else None
    return render(frame_from_records(records), out, key=key, windows=windows,
                  gaussian=gaussian, scale=profile.scale_std, title=title,
                  alert_score=alert_score)


def print_alerts(records: Sequence[ScoredRecord], alert_score: float = ALERT_SCORE,
                 limit: int = 20) -> None:
    outside = sum(r.anomaly for r in records)
    alerts = [r for r in records if r.alert]
    print(f"{outside} records outside the normal band; {len(alerts)} alerts (a peak of the "
          f"anomaly score above {alert_score}: one per incident):")
    for r in alerts[:limit]:
        print(f"  {r.key}  {r.timestamp:%Y-%m-%d %H:%M}  value {r.value:.4g} expected "
              f"{r.prediction:.4g}  anomaly score {r.anomaly_score:.3f}  log-PD {r.log_pd:.1f}")
    if len(alerts) > limit:
        print(f"  ... and {len(alerts) - limit} more (see the CSV)")


def file_name(key: str) -> str:
    """The key as a plain file name: no folders, no leading dot."""
    return re.sub(r"[^\w.-]+", "_", key).lstrip(".") or "series"


def run_detect(args: argparse.Namespace) -> int:
    cfg_fields = {k.removeprefix("cfg_"): v for k, v in vars(args).items()
                  if k.startswith("cfg_") and v is not None}
    cfg = TrainConfig(**cfg_fields)
    series = csv_series(args.csv, args.labels, args.key)
    windows = read_windows(args.labels, args.csv) if args.labels else []
    out_dir: Path = args.out_dir
    # Checked before training; the key names the files but never leaves out_dir.
    name = file_name(series.key)
    csv_out = writable_file(out_dir / f"{name}.scored.csv", "scored rows")
    png_out = writable_file(out_dir / f"{name}.png", "the plot")
    writable_file(out_dir / "models" / cfg.name / "probe", "the model")
    alert_score = Settings().alert_score  # ANOMALY_ALERT_SCORE, as the processor reads it
    result = detect(series, cfg, str(args.csv), out_dir / "models",
                    ScoreRule(alert_score=alert_score))
    md = result.outcome.metadata
    print_outcome(md, out_dir / "models" / md.name / md.version)
    csv_path = write_scored_csv(result.scored, csv_out)
    png = plot_records(result.scored, md, series.key, windows, png_out,
                       alert_score=alert_score)
    if result.rejected_rows:
        print(f"{len(result.rejected_rows)} rows skipped: timestamp not after the previous row "
              f"(rows {result.rejected_rows[:5]}{' ...' if len(result.rejected_rows) > 5 else ''})")
    print_alerts(result.scored, alert_score)
    if windows:
        print(f"labelled windows with at least one alert: {windows_hit(result.scored, windows)}"
              f" of {len(windows)}")
    print(f"scored rows: {csv_path}")
    print(f"plot: {png}")
    return 0
