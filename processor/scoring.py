"""From windows to scores: scaling, one forward pass, error, log-PD, threshold, band.

One shared network serves every key of a model version; what differs per key is a
`Profile` (its scaler, error Gaussian and threshold). Keys the model never saw use the
version's pooled default profile. Training, offline detection, evaluation and the stream
processor all score through `score_windows`, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from processor.gaussian import band_half_width, log_pdf

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: Maps a batch of scaled windows (n, width) to the scaled next values (n,).
PredictFn = Callable[[FloatArray], FloatArray]

#: Scaler floor: a constant training series keeps unit scale rather than dividing by ~0.
MIN_SCALE = 1e-6


class Profile(BaseModel):
    """Per-key statistics of a model version. Errors are Gaussian in *scaled* units."""

    model_config = ConfigDict(frozen=True)

    scale_mean: float
    scale_std: float
    error_mean: float
    error_var: float
    threshold: float
    interval_ms: float | None = None  # median sampling interval seen in training


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

    def lookup(self, keys: Sequence[str]) -> IntArray:
        get, default = self.index.get, self.default_index
        return np.fromiter((get(k, default) for k in keys), np.int64, len(keys))


@dataclass(frozen=True)
class Scores:
    """Per-window results, all in value units except `scaled_error` and `log_pd`."""

    prediction: F64
    error: F64
    scaled_error: F64
    log_pd: F64
    threshold: F64
    anomaly: npt.NDArray[np.bool_]
    band_low: F64
    band_high: F64


def score_windows(
    windows: FloatArray,
    targets: npt.ArrayLike,
    profile_index: IntArray,
    table: ProfileTable,
    predict: PredictFn,
) -> Scores:
    """Score each target against the prediction from the raw-valued window before it."""
    x = np.asarray(targets, np.float64)
    mean = table.scale_mean[profile_index]
    std = table.scale_std[profile_index]
    scaled = ((windows - mean[:, None]) / std[:, None]).astype(np.float32)
    pred_scaled = predict(scaled).astype(np.float64)
    prediction = pred_scaled * std + mean
    scaled_error = (x - mean) / std - pred_scaled
    err_mean = table.error_mean[profile_index]
    err_var = table.error_var[profile_index]
    thr = table.threshold[profile_index]
    lpd = log_pdf(scaled_error, err_mean, err_var)
    half = band_half_width(err_var, thr)
    return Scores(
        prediction=prediction,
        error=x - prediction,
        scaled_error=scaled_error,
        log_pd=lpd,
        threshold=thr,
        anomaly=lpd < thr,
        band_low=prediction + (err_mean - half) * std,
        band_high=prediction + (err_mean + half) * std,
    )


def fit_scaler(values: npt.ArrayLike) -> tuple[float, float]:
    """Mean and standard deviation of the training values (the standard scaler)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite values to fit a scaler on")
    std = float(v.std())
    return float(v.mean()), std if std > MIN_SCALE else 1.0
