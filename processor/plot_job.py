"""`anomaly plot`: the picture, from a file of scored records or the scored topic."""

from __future__ import annotations

import argparse
from pathlib import Path

from processor.config import Settings
from processor.dataset import DataError, read_windows
from processor.model_store import ModelStoreError, read_metadata


def _scored_from_topic(settings: Settings) -> list[object]:
    from processor.stream.topic_reader import read_range
    from schemas.records import ScoredRecord

    return [ScoredRecord.model_validate_json(r.value)
            for r in read_range(settings, settings.scored_topic) if r.value]


def run_plot(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _plot(args, settings)
    except ValueError as exc:  # the plot module reports unusable input this way
        where = f"{args.input}: " if args.input is not None else ""
        raise DataError(f"{where}{exc}") from exc


def _plot(args: argparse.Namespace, settings: Settings) -> int:
    from processor.plot import frame_from_records, load_scored, render

    frame = (load_scored(args.input) if args.input is not None
             else frame_from_records(_scored_from_topic(settings)))  # type: ignore[arg-type]
    if frame.empty:
        raise ValueError("no scored records to plot")
    keys = sorted(frame["key"].unique())
    key = args.key or (keys[0] if len(keys) == 1 else None)
    if key is None:
        raise ValueError(f"several keys in the data; choose one with --key: {keys[:10]}")
    windows = []
    if args.labels is not None:
        windows = read_windows(args.labels, args.labels_for or Path(f"{key}.csv"))
    gaussian, scale = None, None
    versions = frame.loc[frame["key"] == key, "model_version"].dropna().unique()
    if len(versions):
        try:
            md = read_metadata(settings.model_store / settings.model_name / str(versions[-1]))
            profile = md.profiles.get(key, md.default_profile)
            scale = profile.scale_std
            if profile.steps == 1:  # an l-step threshold does not bound the one-step error
                gaussian = (profile.error_mean, profile.error_var)
        except ModelStoreError:
            pass  # the histogram is drawn without the fitted curve
    out = render(frame, args.out if args.out.suffix else args.out.with_suffix(".png"), key=key,
                 windows=windows, gaussian=gaussian, scale=scale)
    print(f"plot: {out}")
    return 0
