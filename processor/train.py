"""The offline training job: series in, a scored and versioned model out.

Per key, the series is split in time order into train / validation / test. The shared
LSTM learns from the normal part of every key's training windows (labelled anomalies kept
out), early-stopping on the normal validation windows. Each key's Gaussian is fitted by
maximum likelihood to its training errors; the threshold is chosen on validation data
(F-beta with labels, a low quantile without) and judged on the test part.

With `steps` = l > 1 (Malhotra's full method) the network predicts the next l values of
each window, every value gets an l-vector of errors, and each key's error model is a
multivariate Gaussian. Each scored row keeps the w + l - 1 values before it: the window
ending l steps earlier plus the l targets that window is trained on, so one row serves
both training the network and scoring.

With a `season` (by default one day at the data's sampling interval) the network also
reads the values one season before its window; each stored window then reaches that
far back (`processor.windows.input_width`). Data too short to train that on falls back
to no season, said in the log.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from pydantic import BaseModel, Field, field_validator, model_validator

from processor.dataset import DataError, Series, keep_in_order
from processor.gaussian import Gaussian, MultivariateGaussian
from processor.model_store import DataRange, ModelMetadata, new_version
from processor.scoring import Profile, ProfileTable, fit_scaler, score_windows
from processor.threshold import (
    ThresholdChoice,
    best_fbeta_threshold,
    evaluate,
    quantile_threshold,
)
from processor.windows import input_width, sliding_windows

log = structlog.get_logger(__name__)

PARTS = ("train", "val", "test")
DAY_MS = 86_400_000
#: Training windows each key needs before a seasonal network is trained on it.
MIN_SEASON_WINDOWS = 100
#: The most rows a 'day' season may be (a day at one-minute sampling): beyond, every key
#: would store that many values, so a season must be given in rows.
MAX_DAY_ROWS = 1440
#: Windows scaled and scored at once after training (bounds the memory of a long key).
SCORE_CHUNK = 8192


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run (flags of `anomaly train`)."""

    name: str = Field("default", description="model name in the store")
    window: int = Field(50, ge=2, le=1000, description="past values the LSTM reads")
    units: int = Field(64, ge=1, description="LSTM units per layer")
    layers: int = Field(1, ge=1, le=4, description="stacked LSTM layers")
    steps: int = Field(1, ge=1, description="values predicted ahead (Malhotra's l)")
    dropout: float = Field(0.0, allow_inf_nan=False, ge=0, lt=1,
                           description="dropout after each LSTM layer")
    relative: bool = Field(False, description="see windows relative to their last value "
                           "and predict the change from it")
    season: int | Literal["day", "none"] = Field(
        "day", description="seasonal lag in rows the network also reads (the values one "
        "season before its window): 'day' is one day at the median sampling interval (at "
        "most 1440 rows), 'none' or 0 turns it off")
    epochs: int = Field(40, ge=1, description="most passes over the training windows")
    batch_size: int = Field(64, ge=1, description="windows per gradient step")
    patience: int = Field(5, ge=1, description="epochs without a better validation loss "
                          "before stopping")
    train_frac: float = Field(0.5, allow_inf_nan=False, gt=0, lt=1,
                              description="share of each key's rows, first in time, for "
                              "training")
    val_frac: float = Field(0.25, allow_inf_nan=False, gt=0, lt=1,
                            description="share after that for early stopping and the "
                            "threshold; the rest is the test part")
    beta: float = Field(0.1, allow_inf_nan=False, gt=0,
                        description="F-beta the threshold maximises on labelled validation "
                        "data (below 1 favours precision)")
    quantile: float = Field(0.001, allow_inf_nan=False, gt=0, lt=1,
                            description="without labels: the share of validation rows the "
                            "threshold flags")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="random seed of the network's "
                      "training")
    verbose: int = 2

    @field_validator("season", mode="before")
    @classmethod
    def _season_text(cls, v: object) -> object:
        if isinstance(v, str) and v not in ("day", "none"):
            try:
                return int(v)
            except ValueError:
                raise ValueError(f"{v!r} is none of 'day', 'none' or a number of "
                                 "rows") from None
        return v

    @field_validator("season")
    @classmethod
    def _season_rows(cls, v: int | str) -> int | str:
        if isinstance(v, int) and (v < 0 or v == 1):
            raise ValueError("a season is at least 2 rows (0 or 'none': no season)")
        return v

    @model_validator(mode="after")
    def _season_covers_steps(self) -> TrainConfig:
        if isinstance(self.season, int) and 0 < self.season <= self.steps:
            raise ValueError(f"season: a season of {self.season} rows must be longer than "
                             f"the {self.steps} steps predicted")
        return self


@dataclass
class KeyWindows:
    """One key's windows (raw values), targets, and per-target bookkeeping.

    A window holds the w + l - 1 values before its target (w for one step).
    """

    key: str
    windows: npt.NDArray[np.float32]
    targets: npt.NDArray[np.float64]
    part: npt.NDArray[np.int8]  # 0 train, 1 val, 2 test
    label: npt.NDArray[np.bool_]  # the target row is labelled anomalous
    clean: npt.NDArray[np.bool_]  # no labelled row in the window nor the target
    scale: tuple[float, float] = (0.0, 1.0)
    interval_ms: float | None = None
    train_values: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    scaled_error: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    steps: int = 1  # (n, steps) scaled errors when above 1
    #: The key's usable values, of which `windows` is a view (float32) and `targets` the
    #: tail; window i starts at value i.
    source: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))


@dataclass
class TrainOutcome:
    metadata: ModelMetadata
    network: Any
    per_key: list[KeyWindows]
    log_pd: dict[str, npt.NDArray[np.float64]]


def split_points(n: int, cfg: TrainConfig) -> tuple[int, int]:
    if cfg.train_frac + cfg.val_frac >= 1:
        raise DataError("train_frac + val_frac must leave a test part (sum below 1)")
    return int(n * cfg.train_frac), int(n * (cfg.train_frac + cfg.val_frac))


def stored_width(cfg: TrainConfig, season: int) -> int:
    """Values before each target: the network's input plus the l - 1 later targets."""
    return input_width(cfg.window, season, cfg.steps) + cfg.steps - 1


def season_fits(n: int, cfg: TrainConfig, season: int) -> bool:
    """Whether `n` rows leave enough training windows for a network with this season."""
    return int(n * cfg.train_frac) - stored_width(cfg, season) >= MIN_SEASON_WINDOWS


def resolve_season(series: Sequence[Series], cfg: TrainConfig) -> int:
    """The seasonal lag in rows for this data: `cfg.season` as given, or for 'day' one day
    at the median sampling interval when every key is long enough to train on it."""
    if cfg.season == "none":
        return 0
    if cfg.season != "day":
        return cfg.season
    usable = [keep_in_order(s)[0] for s in series]  # as `prepare` will see them
    season, intervals = day_rows(usable)
    if not season:
        return 0
    shortest = min(len(s) for s in usable)
    if season > MAX_DAY_ROWS:
        log.info("season_off", season_rows=season, reason=f"more than {MAX_DAY_ROWS} rows a "
                 "day: every key would hold a day of values (give --season in rows)")
        return 0
    if season <= cfg.steps or not season_fits(shortest, cfg, season):
        log.info("season_off", season_rows=season, shortest_key_rows=shortest,
                 reason="too few rows to train on the values one day earlier")
        return 0
    if len({round(DAY_MS / i) for i in intervals}) > 1:
        log.warning("season_keys_sampled_differently", season_rows=season,
                    note="the season is a day at the median interval over keys; keys "
                    "sampled at other rates read another lag")
    return season


def day_rows(usable: Sequence[Series]) -> tuple[int, list[float]]:
    """One day in rows at the keys' median sampling interval (0 when unknown), and each
    key's own median interval."""
    intervals = [float(np.median(np.diff(s.timestamps))) for s in usable if len(s) > 1]
    interval = float(np.median(intervals)) if intervals else 0.0
    return (round(DAY_MS / interval) if interval > 0 else 0), intervals


def trainable(series: Sequence[Series], cfg: TrainConfig
              ) -> tuple[list[Series], dict[str, int]]:
    """For retraining on many keys: the keys long enough to train on, and the rest with
    their usable rows.

    One new sensor must not stop the next version (or, with 'day', turn the season off
    for every key): a key too short for the window, or for the season when other keys
    have a day to spare, is left out and scored with the default profile until a later
    retraining has enough of it. A single series is not filtered: it is the whole job.
    """
    usable = {s.key: keep_in_order(s)[0] for s in series}
    rows = {k: len(u) for k, u in usable.items()}
    kept = [s for s in series if rows[s.key] >= 4 * (cfg.window + cfg.steps - 1)]
    if cfg.season != "none" and kept:
        season = int(cfg.season) if cfg.season != "day" else day_rows(
            [usable[s.key] for s in kept])[0]
        if cfg.season == "day" and season > MAX_DAY_ROWS:
            season = 0  # `resolve_season` turns it off and says so
        if season > cfg.steps:
            fits = [s for s in kept if season_fits(rows[s.key], cfg, int(season))]
            kept = fits or kept  # none fits: `resolve_season` turns it off and says so
    names = {s.key for s in kept}
    return kept, {k: n for k, n in rows.items() if k not in names}


def prepare(series: Series, cfg: TrainConfig) -> KeyWindows:
    """Cut one key into windows and mark each target's part, label and cleanliness.

    `cfg.season` is resolved (rows) by now."""
    s, dropped = keep_in_order(series)
    if dropped:
        log.warning("rows_dropped_out_of_order", key=s.key, rows=dropped)
    n = len(s)
    recent = cfg.window + cfg.steps - 1
    if n < 4 * recent:
        raise DataError(f"series {s.key!r} has {n} usable row{'s' * (n != 1)}; need at least "
                        f"{4 * recent} for window {cfg.window}"
                        + (f" and {cfg.steps} steps" if cfg.steps > 1 else ""))
    season = int(cfg.season) if cfg.season not in ("day", "none") else 0
    if season and not season_fits(n, cfg, season):
        raise DataError(f"series {s.key!r} has {n} usable rows; a season of {season} rows "
                        f"needs {MIN_SEASON_WINDOWS} training windows of "
                        f"{stored_width(cfg, season)} values before them")
    width = stored_width(cfg, season)
    t_end, v_end = split_points(n, cfg)
    labels = s.labels if s.labels is not None else np.zeros(n, bool)
    x, _ = sliding_windows(s.values, width, copy=False)  # a view: no memory
    y = s.values[width:]
    target_row = np.arange(width, n)
    part = np.select([target_row < t_end, target_row < v_end], [0, 1], 2).astype(np.int8)
    lab_windows = np.lib.stride_tricks.sliding_window_view(labels, width + 1)
    clean = np.asarray(~lab_windows.any(axis=1), bool)
    train_values = s.values[:t_end][~labels[:t_end]]
    kw = KeyWindows(s.key, x, y.astype(np.float64), part, labels[width:], clean,
                    steps=cfg.steps, source=np.asarray(s.values, np.float64))
    kw.scale = fit_scaler(train_values)
    kw.train_values = train_values
    kw.interval_ms = float(np.median(np.diff(s.timestamps)))
    return kw


class TrainingRows:
    """The (input, targets) pairs of one part of every key, scaled a batch at a time.

    A key's windows are a view of its series; gathering and scaling them all at once
    would hold every window of every key in memory, hundreds of values wide with a
    season. Each row is a start offset into one array of all keys' values, so a batch is
    one gather. Inputs are the first w (input width) values of a row's window, targets
    the values after them: the next one, or for l steps the window's last l - 1 values
    and its target.
    """

    def __init__(self, per_key: Sequence[KeyWindows], part: int) -> None:
        values, starts, means, stds = [], [], [], []
        offset = 0
        for kw in per_key:
            rows = np.flatnonzero((kw.part == part) & kw.clean)
            values.append(kw.source)
            starts.append(offset + rows)
            means.append(np.full(len(rows), kw.scale[0]))
            stds.append(np.full(len(rows), kw.scale[1]))
            offset += len(kw.source)
        self.values = np.concatenate(values)
        self.starts = np.concatenate(starts)
        self.mean = np.concatenate(means)
        self.std = np.concatenate(stds)
        self.width = per_key[0].windows.shape[1]
        self.steps = per_key[0].steps

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, rows: npt.NDArray[np.int64]) -> tuple[Any, Any]:
        span = self.values[self.starts[rows, None] + np.arange(self.width + 1)]
        mean, std = self.mean[rows, None], self.std[rows, None]
        # In float32 as the stored windows are, the target in float64 as the series is.
        x = ((span[:, :-1].astype(np.float32) - mean.astype(np.float32))
             / std.astype(np.float32)).astype(np.float32)
        y = ((span[:, -1] - mean[:, 0]) / std[:, 0]).astype(np.float32)
        if self.steps == 1:
            return x, y
        w = self.width - self.steps + 1
        return np.ascontiguousarray(x[:, :w]), np.concatenate([x[:, w:], y[:, None]], axis=1)


def _probe(mean: float, std: float, steps: int) -> Profile:
    """A profile that only scales: the errors are wanted before their Gaussian exists."""
    if steps == 1:
        return Profile(scale_mean=mean, scale_std=std, error_mean=0.0, error_var=1.0,
                       threshold=-np.inf)
    return Profile(scale_mean=mean, scale_std=std, error_mean=0.0, error_var=1.0,
                   threshold=-np.inf, error_mean_vector=[0.0] * steps,
                   error_cov=np.eye(steps).tolist())


def _profile(scale: tuple[float, float], g: Gaussian | MultivariateGaussian, threshold: float,
             interval_ms: float | None) -> Profile:
    """The stored profile; an l-step one also says its one-step marginal."""
    if isinstance(g, Gaussian):
        return Profile(scale_mean=scale[0], scale_std=scale[1], error_mean=g.mean,
                       error_var=g.var, threshold=threshold, interval_ms=interval_ms)
    return Profile(scale_mean=scale[0], scale_std=scale[1], error_mean=float(g.mean[0]),
                   error_var=float(g.cov[0, 0]), threshold=threshold, interval_ms=interval_ms,
                   error_mean_vector=g.mean.tolist(), error_cov=g.cov.tolist())


def choose_threshold(
    lpd: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_] | None, cfg: TrainConfig
) -> ThresholdChoice:
    if labels is not None and labels.any():
        return best_fbeta_threshold(lpd, labels, cfg.beta)
    if labels is not None:
        log.warning("no_labelled_anomaly_in_validation", fallback="quantile")
    return quantile_threshold(lpd, cfg.quantile)


def train(series: Sequence[Series], cfg: TrainConfig, source: str) -> TrainOutcome:
    """Train one model version over all given keys (imports TensorFlow)."""
    from processor import network as nw

    if not series:
        raise DataError("no series to train on")
    started = time.monotonic()
    nw.set_seed(cfg.seed)
    cfg = cfg.model_copy(update={"season": resolve_season(series, cfg)})
    season = int(cfg.season)
    per_key = [prepare(s, cfg) for s in series]
    has_labels = any(s.labels is not None for s in series)
    train_rows, val_rows = TrainingRows(per_key, 0), TrainingRows(per_key, 1)
    if len(train_rows) < cfg.batch_size or len(val_rows) < 1:
        raise DataError(f"too little normal data: {len(train_rows)} training and "
                        f"{len(val_rows)} validation windows without labelled anomalies")
    log.info("training_started", keys=len(per_key), train_windows=len(train_rows),
             val_windows=len(val_rows), window=cfg.window, units=cfg.units,
             layers=cfg.layers, steps=cfg.steps, season=season)
    spec = nw.NetworkSpec(cfg.window, cfg.units, cfg.layers, cfg.dropout, cfg.steps,
                          cfg.relative, season)
    network = nw.build_network(spec)
    fit = nw.fit_network(
        network, train_rows, val_rows, epochs=cfg.epochs, seed=cfg.seed,
        batch_size=cfg.batch_size, patience=cfg.patience, verbose=cfg.verbose,
        on_epoch=lambda e, logs: log.info("epoch", epoch=e + 1, **{
            k: round(float(v), 6) for k, v in logs.items()}),
    )
    predictor = nw.Predictor(network, spec.input_width, steps=cfg.steps)

    # Errors of every window under the trained network (Gaussian not yet known).
    for kw in per_key:
        probe = _probe(*kw.scale, cfg.steps)
        probe_table = ProfileTable({kw.key: probe}, probe)
        kw.scaled_error = np.concatenate([
            score_windows(kw.windows[lo:lo + SCORE_CHUNK], kw.targets[lo:lo + SCORE_CHUNK],
                          np.zeros(len(kw.targets[lo:lo + SCORE_CHUNK]), np.int64),
                          probe_table, predictor).scaled_error
            for lo in range(0, len(kw.targets), SCORE_CHUNK)])

    error_model: type[Gaussian] | type[MultivariateGaussian] = (
        Gaussian if cfg.steps == 1 else MultivariateGaussian)
    try:
        gaussians = {kw.key: error_model.fit(kw.scaled_error[(kw.part == 0) & kw.clean])
                     for kw in per_key}
    except ValueError as exc:
        raise DataError(f"cannot fit the error Gaussian: {exc}") from exc
    pooled = error_model.fit(np.concatenate([kw.scaled_error[(kw.part == 0) & kw.clean]
                                             for kw in per_key]))
    lpd = {kw.key: gaussians[kw.key].log_pdf(kw.scaled_error) for kw in per_key}

    def pooled_part(part: int) -> tuple[Any, Any]:
        sel = [(lpd[kw.key][kw.part == part], kw.label[kw.part == part]) for kw in per_key]
        return np.concatenate([a for a, _ in sel]), np.concatenate([b for _, b in sel])

    val_lpd, val_lab = pooled_part(1)
    choice = choose_threshold(val_lpd, val_lab if has_labels else None, cfg)
    test_lpd, test_lab = pooled_part(2)
    flagged = test_lpd < choice.threshold
    metrics: dict[str, float | int | None] = {
        "test_rows": len(test_lpd),
        "test_flagged": int(flagged.sum()),
        "val_flagged": int((val_lpd < choice.threshold).sum()),
        "best_val_loss": fit.best_val_loss,
    }
    if has_labels:
        metrics.update(evaluate(flagged, test_lab, cfg.beta).as_dict("test_"))
        if choice.validation is not None:
            metrics.update(choice.validation.as_dict("val_"))

    d_mean, d_std = fit_scaler(np.concatenate([kw.train_values for kw in per_key]))
    profiles = {kw.key: _profile(kw.scale, gaussians[kw.key], choice.threshold, kw.interval_ms)
                for kw in per_key}
    default = _profile((d_mean, d_std), pooled, choice.threshold,
                       float(np.median([kw.interval_ms for kw in per_key])))
    first = min(int(s.timestamps[0]) for s in series)
    last = max(int(s.timestamps[-1]) for s in series)
    metadata = ModelMetadata(
        name=cfg.name, version=new_version(), created_at=datetime.now(UTC),
        window=cfg.window, units=cfg.units, layers=cfg.layers, steps=cfg.steps,
        season=season, profiles=profiles,
        default_profile=default, threshold=choice.threshold,
        threshold_method=choice.method, beta=cfg.beta if has_labels else None,
        metrics=metrics,
        data_range=DataRange(start=datetime.fromtimestamp(first / 1000, UTC),
                             end=datetime.fromtimestamp(last / 1000, UTC),
                             rows=sum(len(s) for s in series), source=source),
        splits={p: int(sum((kw.part == i).sum() for kw in per_key)) for i, p in enumerate(PARTS)},
        training={"epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch,
                  "train_loss": fit.train_loss, "seconds": round(time.monotonic() - started, 1),
                  **cfg.model_dump(exclude={"verbose"})},
    )
    log.info("training_finished", version=metadata.version, threshold=choice.threshold,
             method=choice.method, **{k: v for k, v in metrics.items() if v is not None})
    return TrainOutcome(metadata, network, per_key, lpd)
