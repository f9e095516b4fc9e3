"""`anomaly evaluate`: the Numenta Anomaly Benchmark protocol with this detector.

Per series, in time order and without labels: train on the probationary period, then
stream every row through the same `Engine` the stream processor runs. By default the
model is retrained on all past rows whenever the data seen has doubled, as a scheduled
retraining job would do. A row's NAB anomaly score is the engine's `anomaly_score` where
it alerts and 0 elsewhere (`processor.calibration`): NAB's corpus-wide threshold sweep
then chooses among the alerts, one detection per incident.

The offline post-processing options (`--calibrate`, `--likelihood`, `--horizon`,
`--smooth`, `--group`, `processor.postprocess`) score the scaled errors another way
instead; they are what earlier versions of this detector were measured with, kept so the
path to the current score can be rerun, and the stream does not apply them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from processor.bench import machine
from processor.calibration import ScoreColumns, ScoreRule, ScoreStore, nab_score
from processor.config import Settings
from processor.dataset import DataError, Series, check_sorted, writable_file
from processor.detect import loaded_from_outcome
from processor.engine import SCORED, Engine, Observation
from processor.gaussian import Gaussian
from processor.nab.corpus import (
    CorpusFile,
    data_files,
    load_corpus,
    load_profiles,
    load_window_limits,
    published_scores,
    write_results,
)
from processor.nab.scoring import (
    OUTSIDE,
    normalise,
    null_score,
    perfect_score,
    prepare_file,
    probation_length,
    score_corpus,
    window_positions,
)
from processor.postprocess import PostProcess, scores, vector_scores
from processor.scoring import MIN_SCALE
from processor.train import TrainConfig, season_fits, train

log = structlog.get_logger(__name__)

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
PUBLISHED = ("ARTime", "numenta", "contextOSE", "randomCutForest", "windowedGaussian")


@dataclass(frozen=True)
class EvalConfig:
    window: int = 30
    units: int = 32
    epochs: int = 30
    retrain: str = "doubling"  # or "none"
    seed: int = 0
    steps: int = 1
    relative: bool = False
    season: int | str = "day"  # rows, "day" or "none": see `TrainConfig.season`
    #: The stream processor's default: a gap this many intervals long restarts a window.
    gap_reset_intervals: float = Settings.model_fields["gap_reset_intervals"].default


def series_window(cfg: EvalConfig, probation: int) -> int:
    """The window for one series: `cfg.window`, or a quarter of the probationary rows
    when that is shorter, since training needs at least four windows' worth of rows (the
    shortest NAB series has 186 probationary rows). Kept for the series' retrainings so
    that every model reads the same stretch of history."""
    return max(2, min(cfg.window, probation // 4))


def _train_config(cfg: EvalConfig, window: int, season: int | str) -> TrainConfig:
    return TrainConfig(name="nab", window=window, units=cfg.units, epochs=cfg.epochs,
                       batch_size=32, patience=5, train_frac=0.7, val_frac=0.25,
                       seed=cfg.seed, steps=cfg.steps, relative=cfg.relative, season=season,
                       verbose=0)


def _train(series: Series, cfg: EvalConfig, window: int, season: int | str) -> Any:
    outcome = train([series], _train_config(cfg, window, season), "nab")
    return loaded_from_outcome(outcome, Path("."))


def _retrain_points(n: int, probation: int, policy: str) -> list[int]:
    if policy == "none":
        return []
    points, at = [], probation * 2
    while at < n:
        points.append(at)
        at *= 2
    return points


F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FileErrors:
    """Per row, what the engine gave: the anomaly score and peak flag (the NAB score),
    the deviation they came from (NaN when unscored, for other score rules), and the
    scaled error with the active Gaussian (for the offline post-processing variants).

    `error`, `mean` and `var` are the one-step ones. An l-step model adds the error
    vectors (n, l) and the active multivariate Gaussian, `vector_mean` (n, l) and
    `cov` (n, l, l).
    """

    error: F64
    mean: F64
    var: F64
    vectors: F64 | None = None
    vector_mean: F64 | None = None
    cov: F64 | None = None
    deviation: F64 | None = None
    floor: F64 | None = None
    outside: npt.NDArray[np.bool_] | None = None  # the model's own flag (log-PD < threshold)
    score: F64 | None = None
    peak: npt.NDArray[np.bool_] | None = None
    alert: npt.NDArray[np.bool_] | None = None
    rule: str = ""  # repr of the ScoreRule the engine scored with

    def scores(self, pp: PostProcess) -> F64:
        """Per-row NAB anomaly scores under an offline post-processing variant."""
        if self.vectors is None or self.vector_mean is None or self.cov is None:
            return scores(self.error, self.mean, self.var, pp)
        return vector_scores(self.vectors, self.vector_mean, self.cov, pp)

    def nab_scores(self, rule: ScoreRule | None = None) -> F64:
        """Per-row NAB anomaly scores as the stream gives them: the engine's, or under
        another rule the same calibration code run over the engine's deviations (what
        the engine would have given with that rule: a test checks it)."""
        if self.deviation is None or self.floor is None or self.score is None \
                or self.peak is None or self.alert is None:
            raise ValueError("errors cached without the engine's scores; recompute them")
        rule = rule or ScoreRule()
        if repr(rule) == self.rule:
            return nab_score(ScoreColumns(self.score, self.peak, self.alert))
        keys = ["s"] * len(self.deviation)
        return nab_score(ScoreStore(rule, initial_capacity=1).update(
            keys, self.deviation, self.floor, self.outside))


def file_errors(cf: CorpusFile, cfg: EvalConfig, first_model: Any = None,
                rule: ScoreRule | None = None) -> FileErrors:
    """Stream one series through the engine, learning only from rows already seen.

    The engine sees every row, the probationary ones too (windows fill, and the score
    history learns the first model's errors there); NAB scores only the rows after them.
    The season is settled by the first training and kept by the retrainings, so that the
    windows never have to fill again. `first_model` replaces the model trained on the
    probationary period (to compare with another path using the very same weights).
    """
    n = len(cf.values)
    ts = (cf.timestamps.astype("datetime64[ms]").astype(np.int64))
    series = Series("s", ts, cf.values.astype(np.float64))
    probation = probation_length(n)
    window = series_window(cfg, probation)
    rule = rule or ScoreRule()
    engine = Engine(first_model or _train(series.slice(0, probation), cfg, window, cfg.season),
                    gap_reset_intervals=cfg.gap_reset_intervals, rule=rule)
    season = engine.model.metadata.season
    errors = np.full(n, np.nan)
    mean = np.zeros(n)
    var = np.ones(n)
    deviation = np.full(n, np.nan)
    floor = np.zeros(n)
    outside = np.zeros(n, bool)
    score = np.full(n, np.nan)
    peak = np.zeros(n, bool)
    alert = np.zeros(n, bool)
    steps = engine.model.steps
    vectors = np.full((n, steps), np.nan)
    vector_mean = np.zeros((n, steps))
    cov = np.broadcast_to(np.eye(steps), (n, steps, steps)).copy()
    boundaries = sorted({probation, *_retrain_points(n, probation, cfg.retrain), n})
    start = 0
    for stop in boundaries:
        if start >= probation:
            engine.set_model(_train(series.slice(0, start), cfg, window, season or "none"))
        batch = [Observation("s", int(ts[i]), float(cf.values[i]), 0, i)
                 for i in range(start, stop)]
        profile = engine.model.metadata.profiles["s"]
        mean[start:stop] = profile.error_mean
        var[start:stop] = profile.error_var
        if steps > 1:
            vector_mean[start:stop] = profile.error_mean_vector
            cov[start:stop] = profile.error_cov
        for lo in range(0, len(batch), 512):
            cols = engine.process(batch[lo : lo + 512]).columns
            done = cols.status == SCORED
            rows = cols.offset[done]
            errors[rows] = cols.error[done] / profile.scale_std
            score[rows] = cols.anomaly_score[done]
            peak[rows] = cols.peak[done]
            alert[rows] = cols.alert[done]
            deviation[rows] = cols.deviation[done]
            outside[rows] = cols.anomaly[done]
            floor[rows] = MIN_SCALE * profile.scale_std
            if steps > 1:
                assert cols.scaled_error is not None
                vectors[rows] = cols.scaled_error[done]
        start = stop
    many = steps > 1
    return FileErrors(errors, mean, var, vectors if many else None,
                      vector_mean if many else None, cov if many else None,
                      deviation=deviation, floor=floor, outside=outside, score=score,
                      peak=peak, alert=alert, rule=repr(rule))


def persistence_errors(cf: CorpusFile) -> FileErrors:
    """The errors of the persistence forecast (next value = this value), as a baseline.

    Scaled and modelled as the LSTM's are: by the probationary values' spread and an ML
    Gaussian of the probationary errors; the same calibration (or post-processing) then
    applies, so the difference between the two is what the network adds. No training,
    no cache.
    """
    v = cf.values.astype(np.float64)
    probation = probation_length(len(v))
    scale = float(v[:probation].std()) or 1.0
    error = np.full(len(v), np.nan)
    error[1:] = np.diff(v) / scale
    fitted = Gaussian.fit(error[1:probation])
    deviation = np.abs(error - fitted.mean) * scale
    floor = np.full(len(v), MIN_SCALE * scale)
    # The model's own flag, as `anomaly train` sets it without labels: log-PD below the
    # 0.001 quantile of the probationary errors' log-PD.
    lpd = fitted.log_pdf(error)
    outside = lpd < np.nanquantile(lpd[1:probation], 0.001)
    cols = ScoreStore().update(["s"] * len(v), deviation, floor, outside)
    return FileErrors(error, np.full(len(v), fitted.mean), np.full(len(v), fitted.var),
                      deviation=deviation, floor=floor, outside=outside, score=cols.score,
                      peak=cols.peak, alert=cols.alert, rule=repr(ScoreRule()))


def cache_path(cf: CorpusFile, cfg: EvalConfig, cache_dir: Path) -> Path:
    key = f"w{cfg.window}-u{cfg.units}-e{cfg.epochs}-{cfg.retrain}-s{cfg.seed}"
    if cfg.steps > 1:
        key += f"-l{cfg.steps}"
    if cfg.relative:
        key += "-rel"
    key += f"-season-{cfg.season}-gap{cfg.gap_reset_intervals:g}"
    return cache_dir / key / (cf.name.replace("/", "__") + ".npz")


def _cached(cf: CorpusFile, cfg: EvalConfig, cache_dir: Path) -> bool:
    path = cache_path(cf, cfg, cache_dir)
    if not path.exists():
        return False
    try:
        with np.load(path) as data:
            return "fingerprint" in data.files and str(data["fingerprint"]) == fingerprint(cf)
    except (OSError, ValueError, TypeError, zipfile.BadZipFile):
        return False


#: The modules whose code makes a cache entry: a change to any of them recomputes it.
CACHED_CODE = ("calibration.py", "dataset.py", "engine.py", "evaluate.py", "gaussian.py",
               "network.py", "scoring.py", "train.py", "windows.py")


def fingerprint(cf: CorpusFile) -> str:
    """A digest of the series' timestamps and values and of the code that made the
    errors: an entry is only used for the data and code it was computed with (edited
    data, or a release that trains or scores otherwise: recomputed). The score rule is
    not in it: scores under another rule are recomputed from the cached deviations."""
    digest = hashlib.sha256(np.ascontiguousarray(cf.timestamps).tobytes())
    digest.update(np.ascontiguousarray(cf.values, np.float64).tobytes())
    root = Path(__file__).parent
    for name in CACHED_CODE:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def cached_errors(cf: CorpusFile, cfg: EvalConfig, cache_dir: Path) -> FileErrors:
    """The expensive part (training, streaming) once per series, data and model settings.

    One-step caches keep their original key (steps = 1 is implied); l-step ones add
    `-l<steps>` to the key and the vector arrays to the file. Each entry carries the
    data's fingerprint; an entry for other data, or one without it, is recomputed.
    """
    path = cache_path(cf, cfg, cache_dir)
    wanted = fingerprint(cf)
    if path.exists():
        try:
            with np.load(path) as data:
                stored = {name: data[name] for name in data.files}
            if str(stored.pop("fingerprint", "")) == wanted:
                if "rule" in stored:
                    stored["rule"] = str(stored["rule"])
                return FileErrors(**stored)
            reason = "computed from other data or code, or before fingerprints"
        except (OSError, ValueError, TypeError, zipfile.BadZipFile) as exc:
            reason = f"unreadable ({type(exc).__name__})"
        log.warning("cache_entry_recomputed", path=str(path), reason=reason)
    fe = file_errors(cf, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {f.name: np.asarray(getattr(fe, f.name)) for f in fields(fe)
                              if getattr(fe, f.name) is not None}
    arrays["fingerprint"] = np.array(wanted)
    # Written aside and renamed: an interrupted run leaves no half-written entry.
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        np.savez(handle, **arrays)
    partial.replace(path)
    return fe


def nab_scores(names: list[str], corpus: dict[str, CorpusFile], per_row: dict[str, F64],
               nab_dir: Path) -> dict[str, Any]:
    """Normalised NAB scores (and per-file raw scores) under each profile."""
    n_windows = sum(len(corpus[n].windows) for n in names)
    prepared = {n: prepare_file(per_row[n], corpus[n].windows) for n in names}
    out: dict[str, Any] = {"per_file": {}, "per_row": per_row}
    for profile, cost in load_profiles(nab_dir).items():
        result = score_corpus(prepared, cost)
        out[profile] = round(result.normalised, 2)
        out[f"{profile}_threshold"] = result.threshold
        # What the score is made of: windows with a detection, and detections outside.
        out[f"{profile}_windows_detected"] = sum(
            len(np.unique(f.window_id[(f.scores >= result.threshold) & (f.window_id != OUTSIDE)]))
            for f in prepared.values())
        out[f"{profile}_fp_rows"] = sum(fs.fp for fs in result.files.values())
        for n, fs in result.files.items():
            out["per_file"].setdefault(n, {})[profile] = round(fs.score, 4)
        _check(result.raw, null_score(n_windows, cost), perfect_score(n_windows, cost),
               result.normalised)
    return out


#: Largest magnitude the network takes (it computes in float32).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def checked_profiles(nab_dir: Path) -> None:
    """NAB's three scoring profiles with finite weights: TP and FN positive, FP >= 0."""
    path = nab_dir / "config" / "profiles.json"
    try:
        profiles = load_profiles(nab_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: NAB's scoring profiles are needed "
                        f"({type(exc).__name__}: {exc})") from None
    missing = [p for p in PROFILES if p not in profiles]
    if missing:
        raise DataError(f"{path}: no profile {', '.join(missing)}")
    for name in PROFILES:
        c = profiles[name]
        if not (math.isfinite(c.tp_weight) and math.isfinite(c.fp_weight)
                and math.isfinite(c.fn_weight) and c.tp_weight > 0 and c.fn_weight > 0
                and c.fp_weight >= 0):
            raise DataError(f"{path}: profile {name} needs finite weights, tpWeight and "
                            "fnWeight above 0 and fpWeight not below 0")


def checked_corpus(nab_dir: Path, names: list[str], cfg: EvalConfig | None = None
                   ) -> dict[str, CorpusFile]:
    """The chosen series, each checked before any training: a bad file is one line
    naming it, not a traceback (or a wrong score) a quarter of an hour later."""
    windows_file = nab_dir / "labels" / "combined_windows.json"
    try:
        load_window_limits(nab_dir)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{windows_file}: unreadable windows file "
                        f"({type(exc).__name__}: {exc})") from None
    checked_profiles(nab_dir)
    if len(set(names)) != len(names):
        raise DataError("a file is named twice in --files")
    data_dir = (nab_dir / "data").resolve()
    corpus: dict[str, CorpusFile] = {}
    for name in names:
        path = nab_dir / "data" / name
        parts = Path(name).parts
        if (Path(name).is_absolute() or len(parts) != 2 or ".." in parts
                or not path.resolve().is_relative_to(data_dir)):
            raise DataError(f"{name}: --files names are <category>/<name>.csv inside "
                            f"{nab_dir / 'data'}")
        if not path.is_file():
            raise DataError(f"{path}: no such data file (names are relative to data/, "
                            "e.g. realKnownCause/nyc_taxi.csv)")
        try:
            cf = load_corpus(nab_dir, [name])[name]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, pd.errors.ParserError,
                pd.errors.EmptyDataError) as exc:
            raise DataError(f"{path}: not a timestamp,value CSV ({type(exc).__name__}: "
                            f"{exc})") from None
        bad = np.flatnonzero(~(np.abs(cf.values) <= FLOAT32_MAX))
        if len(bad):
            raise DataError(f"{path}: row {bad[0] + 2} has no finite value within the "
                            f"float32 range ({len(bad)} such rows)")
        try:
            window_positions(len(cf.values), cf.windows)
        except ValueError as exc:
            raise DataError(f"{windows_file}: the windows of {name}: {exc}") from None
        # Rows not later than every row before them: the engine skips these, as the
        # stream processor does (out of order or a repeated timestamp).
        ts = cf.timestamps.astype(np.int64)
        skipped = check_sorted(ts, path)
        if skipped:
            print(f"note: {name}: {skipped} rows whose timestamp is not later than the rows "
                  "before them are skipped unscored", flush=True)
        if cfg is not None:
            probation = probation_length(len(ts))
            need = 4 * (series_window(cfg, probation) + cfg.steps - 1)
            if probation < need:
                raise DataError(f"{path}: its probationary period has {probation} rows; "
                                f"training needs at least {need} (window, --steps)")
            if isinstance(cfg.season, int) and cfg.season > 0:
                tc = _train_config(cfg, series_window(cfg, probation), cfg.season)
                if cfg.season <= cfg.steps or not season_fits(probation - skipped, tc,
                                                              cfg.season):
                    raise DataError(
                        f"{path}: its probationary period has {probation - skipped} usable "
                        f"rows, too few to train on a season of {cfg.season} rows (and "
                        f"--steps {cfg.steps}); try --season day, which falls back to none")
        corpus[name] = cf
    return corpus


def run_evaluate(args: argparse.Namespace) -> int:
    nab_dir: Path = args.nab_dir
    if not (nab_dir / "data").is_dir():
        raise DataError(f"{nab_dir} is not a folder in NAB's layout (no data/ in it)")
    names = args.files or data_files(nab_dir)
    if not names:
        raise DataError(f"{nab_dir / 'data'} holds no <category>/<name>.csv files")
    cfg = EvalConfig(window=args.window, units=args.units, epochs=args.epochs,
                     retrain=args.retrain, seed=args.seed, steps=args.steps,
                     relative=args.relative, season=args.season,
                     gap_reset_intervals=args.gap_reset_intervals)
    corpus = checked_corpus(nab_dir, names, None if args.persistence else cfg)
    out = writable_file(Path(args.out or args.out_dir / "evaluate.json"))
    if out.resolve().is_relative_to(nab_dir.resolve()):
        raise DataError(f"--out {out} lies inside --nab-dir {nab_dir}: it would overwrite "
                        "the benchmark's own files")
    for folder in (args.out_dir / "cache", args.out_dir / "results"):
        writable_file(folder / "probe")
    if not any(corpus[n].windows for n in names):
        raise DataError("none of the chosen files has a labelled anomaly window; NAB's "
                        "scores are normalised by the windows, so add at least one such file")
    pp = PostProcess(horizon=args.horizon, smooth=args.smooth, group=args.group,
                     likelihood=args.likelihood, likelihood_avg=args.likelihood_avg,
                     calibrate=args.calibrate, calibrate_rows=args.calibrate_rows)
    # Without an offline variant, the scores are the engine's, as the stream gives them.
    offline = pp != PostProcess()
    rule = ScoreRule(pane=100, panes=args.reference_rows // 100, group_pane=20,
                     group_panes=args.peak_rows // 20, alert_score=args.alert_score,
                     quiet=args.quiet_rows, needs_band=args.needs_band)
    out_dir: Path = args.out_dir
    started = time.monotonic()
    errors: dict[str, FileErrors] = {}
    cached = 0 if args.persistence else sum(
        _cached(corpus[n], cfg, out_dir / "cache") for n in names)
    detector = "persistence" if args.persistence else "lstm"
    for i, name in enumerate(names, 1):
        t0 = time.monotonic()
        errors[name] = (persistence_errors(corpus[name]) if args.persistence
                        else cached_errors(corpus[name], cfg, out_dir / "cache"))
        elapsed = time.monotonic() - started
        print(f"[{i}/{len(names)}] {name}: {len(corpus[name].values)} rows in "
              f"{time.monotonic() - t0:.0f} s (elapsed {elapsed / 60:.1f} min, about "
              f"{elapsed / i * (len(names) - i) / 60:.0f} min left)", flush=True)

    per_row = {n: errors[n].scores(pp) if offline else errors[n].nab_scores(rule)
               for n in names}
    result = nab_scores(names, corpus, per_row, nab_dir)
    for name in names:
        cf = corpus[name]
        write_results(out_dir / "results" / Path(name).parent / f"{detector}_{Path(name).name}",
                      cf.timestamps, cf.values, result["per_row"][name], cf.windows)
    summary: dict[str, Any] = {
        "command": "anomaly evaluate " + shlex.join(sys.argv[2:]),
        "files": len(names), "windows": sum(len(corpus[n].windows) for n in names),
        "model": {"persistence": True} if args.persistence else cfg.__dict__,
        "postprocess": pp.__dict__ if offline else {"calibration": rule.__dict__},
        **{k: v for k, v in result.items() if k != "per_row"},
        "seconds": round(time.monotonic() - started, 1),
        # Files whose errors (training and streaming, the slow part) came from an earlier
        # run's cache: `seconds` then covers only the scoring.
        "files_from_cache": cached, "machine": machine()}
    if args.sweep:
        summary["sweep"] = sweep(names, corpus, errors, nab_dir)
    # The published detectors' per-file score tables, where the folder has them (NAB's
    # own checkout does; a folder of one's own series need not), over the same files.
    published = {d: _published(nab_dir, d, names) for d in PUBLISHED}
    summary["published_same_files"] = {d: v for d, v in published.items() if v}
    print_report(summary, "persistence" if args.persistence else "this (LSTM)")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written: {out}; per-row results in NAB's format under {out_dir / 'results'}")
    return 0


def _published(nab_dir: Path, detector: str, names: list[str]) -> dict[str, float]:
    """A published detector's scores over these files, or {} when the folder lacks them."""
    try:
        return {p: round(v, 2)
                for p, v in published_scores(nab_dir, detector, names).items()}
    except (OSError, ValueError, KeyError):
        return {}


def sweep(names: list[str], corpus: dict[str, CorpusFile], errors: dict[str, FileErrors],
          nab_dir: Path) -> list[dict[str, Any]]:
    """Post-processing variants on the same cached errors: the path to the chosen one."""
    rows = []
    # The score of a row's |z|: the Gaussian tail score itself, Numenta's likelihood over
    # it (their defaults: 8640 rows of history, averages of 10), or the tail calibrated
    # against the key's recent one-in-a-thousand error.
    transforms: list[dict[str, Any]] = [{}, {"likelihood": 8640}, {"calibrate": 0.999}]
    for transform in transforms:
        for horizon in (0, 500, 2000):
            for smooth in (1, 3, 10):
                for group in (0, 50, 200):
                    pp = PostProcess(horizon, smooth, group, **transform)
                    r = nab_scores(names, corpus, {n: errors[n].scores(pp) for n in names},
                                   nab_dir)
                    rows.append({**pp.__dict__, **{p: r[p] for p in PROFILES}})
                    print(f"  {pp.label():55s} "
                          + " ".join(f"{r[p]:6.1f}" for p in PROFILES), flush=True)
    return rows


def _check(raw: float, null: float, perfect: float, normalised: float) -> None:
    assert abs(normalise(raw, null, perfect) - normalised) < 1e-9


def print_report(summary: dict[str, Any], detector: str = "this (LSTM)") -> None:
    profiles = PROFILES
    print(f"\n{'file':60s} " + " ".join(f"{p[:18]:>18s}" for p in profiles))
    for name, raw in summary["per_file"].items():
        print(f"{name:60s} " + " ".join(f"{raw.get(p, float('nan')):18.3f}" for p in profiles))
    print(f"\nnormalised NAB score over {summary['files']} files ({summary['windows']} windows):")
    print(f"{'detector':20s} " + " ".join(f"{p[:18]:>18s}" for p in profiles))
    print(f"{detector:20s} " + " ".join(f"{summary[p]:18.1f}" for p in profiles))
    print(f"{'  windows detected':20s} " + " ".join(
        f"{summary[p + '_windows_detected']:>13d} of {summary['windows']:<2d}" for p in profiles))
    print(f"{'  rows outside them':20s} " + " ".join(
        f"{summary[p + '_fp_rows']:18d}" for p in profiles))
    for det, published in summary.get("published_same_files", {}).items():
        print(f"{det:20s} " + " ".join(f"{published[p]:18.1f}" for p in profiles))
