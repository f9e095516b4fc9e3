"""`anomaly evaluate`: the Numenta Anomaly Benchmark protocol with this detector.

Per series, in time order and without labels: train on the probationary period, then
score every later row through the same `Engine` the stream processor runs. Optionally the
model is retrained on all past rows whenever the data seen has doubled, as a scheduled
retraining job would do. Each row's anomaly score in [0, 1] is `1 - p`, where p is the
two-sided tail probability of its scaled error under the key's Gaussian: a monotone map of
the log-PD that is comparable across series (NAB picks one threshold for the corpus).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from scipy.special import ndtr

from processor.dataset import Series
from processor.detect import loaded_from_outcome
from processor.engine import Engine, Observation
from processor.nab.corpus import (
    CorpusFile,
    data_files,
    load_corpus,
    load_profiles,
    published_scores,
    write_results,
)
from processor.nab.scoring import (
    normalise,
    null_score,
    perfect_score,
    prepare_file,
    probation_length,
    score_corpus,
)
from processor.train import TrainConfig, train

log = structlog.get_logger(__name__)

PUBLISHED = ("ARTime", "numenta", "contextOSE", "randomCutForest", "windowedGaussian")


@dataclass(frozen=True)
class EvalConfig:
    window: int = 30
    units: int = 32
    epochs: int = 30
    retrain: str = "doubling"  # or "none"
    seed: int = 0


def anomaly_score(scaled_error: npt.NDArray[np.float64], mean: np.float64,
                  var: np.float64) -> npt.NDArray[np.float64]:
    """1 - two-sided Gaussian tail probability of each error: 0 typical, 1 impossible."""
    z = np.abs(scaled_error - mean) / np.sqrt(var)
    return np.asarray(1.0 - 2.0 * ndtr(-z))


def _train(series: Series, cfg: EvalConfig) -> Any:
    tc = TrainConfig(name="nab", window=cfg.window, units=cfg.units, epochs=cfg.epochs,
                     batch_size=32, patience=5, train_frac=0.7, val_frac=0.25, seed=cfg.seed,
                     verbose=0)
    outcome = train([series], tc, "nab")
    return loaded_from_outcome(outcome, Path("."))


def _retrain_points(n: int, probation: int, policy: str) -> list[int]:
    if policy == "none":
        return []
    points, at = [], probation * 2
    while at < n:
        points.append(at)
        at *= 2
    return points


def score_file(cf: CorpusFile, cfg: EvalConfig) -> npt.NDArray[np.float64]:
    """Per-row anomaly scores of one series, learning only from rows already seen."""
    n = len(cf.values)
    ts = (cf.timestamps.astype("datetime64[ms]").astype(np.int64))
    series = Series("s", ts, cf.values.astype(np.float64))
    probation = probation_length(n)
    engine = Engine(_train(series.slice(0, probation), cfg))
    scores = np.zeros(n)
    boundaries = sorted({probation, *_retrain_points(n, probation, cfg.retrain), n})
    start = 0
    for stop in boundaries:
        if start >= probation:
            engine.set_model(_train(series.slice(0, start), cfg))
        batch = [Observation("s", int(ts[i]), float(cf.values[i]), 0, i)
                 for i in range(start, stop)]
        profile = engine.model.metadata.profiles["s"]
        for lo in range(0, len(batch), 512):
            scored = [r for r in engine.process(batch[lo : lo + 512]).scored
                      if r.error is not None]
            rows = np.array([r.source_offset for r in scored], np.int64)
            scaled = np.array([r.error for r in scored]) / profile.scale_std
            scores[rows] = anomaly_score(scaled, np.float64(profile.error_mean),
                                         np.float64(profile.error_var))
        start = stop
    return scores


def run_evaluate(args: argparse.Namespace) -> int:
    nab_dir: Path = args.nab_dir
    names = args.files or data_files(nab_dir)
    corpus = load_corpus(nab_dir, names)
    cfg = EvalConfig(window=args.window, units=args.units, epochs=args.epochs,
                     retrain=args.retrain, seed=args.seed)
    out_dir: Path = args.out_dir
    started = time.monotonic()
    per_file: dict[str, npt.NDArray[np.float64]] = {}
    for i, name in enumerate(names, 1):
        t0 = time.monotonic()
        cf = corpus[name]
        per_file[name] = score_file(cf, cfg)
        write_results(out_dir / "results" / Path(name).parent /
                      f"lstm_{Path(name).name}", cf.timestamps, cf.values, per_file[name],
                      cf.windows)
        elapsed = time.monotonic() - started
        print(f"[{i}/{len(names)}] {name}: {len(cf.values)} rows in "
              f"{time.monotonic() - t0:.0f} s (elapsed {elapsed / 60:.1f} min, about "
              f"{elapsed / i * (len(names) - i) / 60:.0f} min left)", flush=True)

    n_windows = sum(len(corpus[n].windows) for n in names)
    summary: dict[str, Any] = {"command": "anomaly evaluate " + shlex.join(sys.argv[2:]),
                               "files": len(names), "windows": n_windows,
                               "config": cfg.__dict__, "per_file": {}}
    prepared = {n: prepare_file(per_file[n], corpus[n].windows) for n in names}
    for profile, cost in load_profiles(nab_dir).items():
        result = score_corpus(prepared, cost)
        summary[profile] = round(result.normalised, 2)
        summary[f"{profile}_threshold"] = result.threshold
        for n, fs in result.files.items():
            summary["per_file"].setdefault(n, {})[profile] = round(fs.score, 4)
        _check(result.raw, null_score(n_windows, cost), perfect_score(n_windows, cost),
               result.normalised)
    summary["seconds"] = round(time.monotonic() - started, 1)
    if set(names) == set(data_files(nab_dir)):
        summary["published_same_files"] = {d: {p: round(v, 2) for p, v in
                                                published_scores(nab_dir, d).items()}
                                            for d in PUBLISHED}
    print_report(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written: {out}; per-row results in NAB's format under {out_dir / 'results'}")
    return 0


def _check(raw: float, null: float, perfect: float, normalised: float) -> None:
    assert abs(normalise(raw, null, perfect) - normalised) < 1e-9


def print_report(summary: dict[str, Any]) -> None:
    profiles = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
    print(f"\n{'file':60s} " + " ".join(f"{p[:18]:>18s}" for p in profiles))
    for name, scores in summary["per_file"].items():
        print(f"{name:60s} " + " ".join(f"{scores.get(p, float('nan')):18.3f}" for p in profiles))
    print(f"\nnormalised NAB score over {summary['files']} files ({summary['windows']} windows):")
    print(f"{'detector':20s} " + " ".join(f"{p[:18]:>18s}" for p in profiles))
    print(f"{'this (LSTM)':20s} " + " ".join(f"{summary[p]:18.1f}" for p in profiles))
    for det, scores in summary.get("published_same_files", {}).items():
        print(f"{det:20s} " + " ".join(f"{scores[p]:18.1f}" for p in profiles))
