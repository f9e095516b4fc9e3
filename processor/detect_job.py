"""`anomaly detect`: the answer for someone who just has a file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from processor.dataset import Windows, read_windows
from processor.detect import (
    detect,
    incidents,
    windows_hit,
    write_scored_csv,
)
from processor.model_store import ModelMetadata
from processor.train import TrainConfig
from processor.train_job import csv_series, print_outcome
from schemas.records import ScoredRecord

#: Anomalies of one key less than this apart are reported as one incident.
INCIDENT_GAP_MS = 60 * 60 * 1000


def plot_records(records: Sequence[ScoredRecord], metadata: ModelMetadata, key: str,
                 windows: Windows, out: Path, title: str | None = None) -> Path:
    from processor.plot import frame_from_records, render

    profile = metadata.profiles.get(key, metadata.default_profile)
    # An l-step threshold bounds the error vector, not the one-step error: the histogram
    # then reads its threshold edges off the bands instead of a one-step Gaussian.
    gaussian = (profile.error_mean, profile.error_var) if profile.steps == 1 else None
    return render(frame_from_records(records), out, key=key, windows=windows,
                  gaussian=gaussian, scale=profile.scale_std, title=title)


def print_incidents(records: Sequence[ScoredRecord], limit: int = 20) -> None:
    groups = incidents(records, INCIDENT_GAP_MS)
    n = sum(r.anomaly for r in records)
    print(f"{n} anomalous records in {len(groups)} incidents "
          f"(anomalies under {INCIDENT_GAP_MS // 60000} min apart grouped):")
    for g in groups[:limit]:
        worst = min(g, key=lambda r: r.log_pd if r.log_pd is not None else 0.0)
        print(f"  {g[0].key}  {g[0].timestamp:%Y-%m-%d %H:%M} .. {g[-1].timestamp:%Y-%m-%d %H:%M}"
              f"  {len(g):3d} records  worst: value {worst.value:.4g} expected "
              f"{worst.prediction:.4g}  log-PD {worst.log_pd:.1f}")
    if len(groups) > limit:
        print(f"  ... and {len(groups) - limit} more (see the CSV)")


def run_detect(args: argparse.Namespace) -> int:
    cfg_fields = {k.removeprefix("cfg_"): v for k, v in vars(args).items()
                  if k.startswith("cfg_") and v is not None}
    cfg = TrainConfig(**cfg_fields)
    series = csv_series(args.csv, args.labels, args.key)
    windows = read_windows(args.labels, args.csv) if args.labels else []
    out_dir: Path = args.out_dir
    result = detect(series, cfg, str(args.csv), out_dir / "models")
    md = result.outcome.metadata
    print_outcome(md, out_dir / "models" / md.name / md.version)
    csv_path = write_scored_csv(result.scored, out_dir / f"{series.key}.scored.csv")
    png = plot_records(result.scored, md, series.key, windows, out_dir / f"{series.key}.png")
    if result.rejected_rows:
        print(f"{len(result.rejected_rows)} rows skipped: timestamp not after the previous row "
              f"(rows {result.rejected_rows[:5]}{' ...' if len(result.rejected_rows) > 5 else ''})")
    print_incidents(result.scored)
    if windows:
        print(f"labelled windows with at least one anomaly: {windows_hit(result.scored, windows)}"
              f" of {len(windows)}")
    print(f"scored rows: {csv_path}")
    print(f"plot: {png}")
    return 0
