"""From windows to scores: scaling, one forward pass, error, log-PD, threshold, band.

One shared network serves every key of a model version; what differs per key is a
`Profile` (its scaler, error Gaussian and threshold). Keys the model never saw use the
version's pooled default profile. Training, offline detection, evaluation and the stream
processor all score through `score_windows`, so they cannot drift apart.

With l-step prediction (`steps` > 1) a value x_t has l errors, one against each of the
predictions made for it from the windows ending at t-1, ..., t-l. Those are recomputed
from the stored history (w + l - 1 values) in the same forward pass rather than kept from
earlier batches, so a score stays a pure function of the key's window state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from processor.gaussian import (
    band_half_width,
    line_band,
    log_pdf,
    mahalanobis_sq,
    mv_log_pdf,
    whitening,
)

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: Maps a batch of scaled windows (n, width) to the scaled next values: (n,) for one
#: step, (n, l) for l steps.
PredictFn = Callable[[FloatArray], FloatArray]

#: Scaler floor: a constant training series keeps unit scale rather than dividing by ~0.
MIN_SCALE = 1e-6


class Profile(BaseModel):
    """Per-key statistics of a model version. Errors are Gaussian in *scaled* units.

    One-step models use `error_mean` / `error_var`. Models predicting l > 1 steps also
    carry the error vectors' mean and full covariance (JSON lists); `error_mean` /
    `error_var` then hold the one-step marginal, for plots and readers of one step.
    """

    model_config = ConfigDict(frozen=True)

    scale_mean: float
    scale_std: float
    error_mean: float
    error_var: float
    threshold: float
    interval_ms: float | None = None  # median sampling interval seen in training
    error_mean_vector: list[float] | None = None
    error_cov: list[list[float]] | None = None

    @property
    def steps(self) -> int:
        return 1 if self.error_mean_vector is None else len(self.error_mean_vector)

    @model_validator(mode="after")
    def _vector_shapes(self) -> Profile:
        vec, cov = self.error_mean_vector, self.error_cov
        if (vec is None) != (cov is None):
            raise ValueError("error_mean_vector and error_cov come together")
        if vec is not None and cov is not None and (
                len(vec) < 2 or len(cov) != len(vec) or any(len(r) != len(vec) for r in cov)):
            raise ValueError("error_cov must be l x l for an error_mean_vector of l >= 2")
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_vectors(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """One-step profiles serialise exactly as before the l-step fields existed."""
        data: dict[str, Any] = handler(self)
        if self.error_mean_vector is None:
            data.pop("error_mean_vector", None)
            data.pop("error_cov", None)
        return data


class ProfileTable:
    """Profiles as parallel arrays, so a batch gathers its parameters in one indexing op."""

    def __init__(self, profiles: Mapping[str, Profile], default: Profile) -> None:
        self.keys = list(profiles)
        self.index = {k: i for i, k in enumerate(self.keys)}
        rows = [*profiles.values(), default]
        self.default_index = len(rows) - 1
        self.scale_mean = np.array([p.scale_mean for p in rows], np.float64)
        self.scale_std = np.array([p.scale_std for p in rows], np.float64)
        self.error_mean = np.array([p.error_mean for p in rows], np.float64)
        self.error_var = np.array([p.error_var for p in rows], np.float64)
        self.threshold = np.array([p.threshold for p in rows], np.float64)
        self.interval_ms = np.array([p.interval_ms or np.inf for p in rows], np.float64)
        steps = {p.steps for p in rows}
        if len(steps) != 1:
            raise ValueError(f"profiles disagree on the number of steps: {sorted(steps)}")
        self.steps = steps.pop()
        # l-step Gaussians: mean vectors (k, l), whitening matrices (k, l, l), log dets (k,)
        self.vector_mean = np.empty((len(rows), 0), np.float64)
        self.whiten = np.empty((len(rows), 0, 0), np.float64)
        self.logdet = np.zeros(len(rows), np.float64)
        if self.steps > 1:
            self.vector_mean = np.array([p.error_mean_vector for p in rows], np.float64)
            self.whiten, self.logdet = whitening(np.array([p.error_cov for p in rows],
                                                          np.float64))

    def lookup(self, keys: Sequence[str]) -> IntArray:
        get, default = self.index.get, self.default_index
        return np.fromiter((get(k, default) for k in keys), np.int64, len(keys))


@dataclass(frozen=True)
class Scores:
    """Per-window results, all in value units except `scaled_error` and `log_pd`.

    `prediction` and `error` are the one-step ones; `scaled_error` is (n,) for one step and
    the error vectors (n, l) for l steps.
    """

    prediction: F64
    error: F64
    scaled_error: F64
    log_pd: F64
    threshold: F64
    anomaly: npt.NDArray[np.bool_]
    band_low: F64
    band_high: F64
    #: How far the error lies from the Gaussian's mean, in value units: |error - mean *
    #: scale|; for l steps the Mahalanobis distance of the error vector times the one-step
    #: error's scale. Falls as log-PD rises; `processor.calibration` scores it per key.
    deviation: F64
    #: Below this a deviation is rounding: a millionth of the key's scale.
    deviation_floor: F64


def score_windows(
    windows: FloatArray,
    targets: npt.ArrayLike,
    profile_index: IntArray,
    table: ProfileTable,
    predict: PredictFn,
) -> Scores:
    """Score each target against the prediction from the raw-valued window before it.

    For l-step profiles each window holds the w + l - 1 values before its target.
    """
    return score_predictions(predict_scaled(windows, profile_index, table, predict),
                             targets, profile_index, table)


def predict_scaled(
    windows: FloatArray,
    profile_index: IntArray,
    table: ProfileTable,
    predict: PredictFn,
) -> F64:
    """The forward pass alone: each target's prediction(s) in scaled units, (n,) for one
    step, (n, l) for l steps. Split from the scoring so a stream can run the model on
    one thread and the array work around it on another."""
    mean = table.scale_mean[profile_index]
    std = table.scale_std[profile_index]
    scaled = ((windows - mean[:, None]) / std[:, None]).astype(np.float32)
    steps = table.steps
    if steps == 1:
        return predict(scaled).astype(np.float64)
    # l-step: the history of target t is x[t-w-l+1 .. t-1]; its window ending at t-j
    # (j = 1..l) is columns l-j .. l-j+w-1, and of that window's l outputs the j-th
    # predicts x_t.
    n, width = windows.shape
    w = width - steps + 1
    if w < 1:
        raise ValueError(f"windows of width {width} are too short for {steps} steps")
    # lagged[i, j - 1] is the window ending j steps before target i.
    lagged = np.lib.stride_tricks.sliding_window_view(scaled, w, axis=1)[:, ::-1]
    out = predict(np.ascontiguousarray(lagged).reshape(n * steps, w)).astype(np.float64)
    return np.diagonal(out.reshape(n, steps, steps), axis1=1, axis2=2)


def score_predictions(
    pred_scaled: F64,
    targets: npt.ArrayLike,
    profile_index: IntArray,
    table: ProfileTable,
) -> Scores:
    """Errors, log-PD, threshold and band from `predict_scaled`'s output."""
    x = np.asarray(targets, np.float64)
    mean = table.scale_mean[profile_index]
    std = table.scale_std[profile_index]
    thr = table.threshold[profile_index]
    if table.steps > 1:
        scaled_error = ((x - mean) / std)[:, None] - pred_scaled
        err_mean = table.vector_mean[profile_index]
        whiten = table.whiten[profile_index]
        logdet = table.logdet[profile_index]
        lpd = mv_log_pdf(scaled_error, err_mean, whiten, logdet)
        one_step_sd = np.sqrt(table.error_var[profile_index])  # the one-step marginal
        deviation = np.sqrt(mahalanobis_sq(scaled_error, err_mean, whiten)) * one_step_sd * std
        prediction = pred_scaled[:, 0] * std + mean
        # The band: the values of x_t whose whole error vector would score >= threshold.
        middle, half = line_band(pred_scaled + err_mean, whiten, logdet, thr)
        low, high = (middle - half) * std + mean, (middle + half) * std + mean
    else:
        prediction = pred_scaled * std + mean
        scaled_error = (x - mean) / std - pred_scaled
        err_mean = table.error_mean[profile_index]
        err_var = table.error_var[profile_index]
        lpd = log_pdf(scaled_error, err_mean, err_var)
        deviation = np.abs(scaled_error - err_mean) * std
        half = band_half_width(err_var, thr)
        low, high = prediction + (err_mean - half) * std, prediction + (err_mean + half) * std
    return Scores(
        prediction=prediction,
        error=x - prediction,
        scaled_error=scaled_error,
        log_pd=lpd,
        threshold=thr,
        anomaly=lpd < thr,
        band_low=low,
        band_high=high,
        deviation=deviation,
        deviation_floor=MIN_SCALE * std,
    )


def fit_scaler(values: npt.ArrayLike) -> tuple[float, float]:
    """Mean and standard deviation of the training values (the standard scaler)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite values to fit a scaler on")
    std = float(v.std())
    return float(v.mean()), std if std > MIN_SCALE else 1.0
