"""The error model: a univariate Gaussian fitted by maximum likelihood.

Malhotra et al. (2015) score each prediction error by its log probability density under
a Gaussian fitted to errors on normal training data; low density means anomalous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_LOG_2PI = math.log(2.0 * math.pi)
#: Floor on the variance so a perfectly predicted (flat) training series still scores.
MIN_VARIANCE = 1e-12


@dataclass(frozen=True)
class Gaussian:
    mean: float
    var: float

    @classmethod
    def fit(cls, errors: npt.ArrayLike) -> Gaussian:
        """Maximum-likelihood estimate: the sample mean and the biased (1/n) variance."""
        e = np.asarray(errors, dtype=np.float64)
        e = e[np.isfinite(e)]
        if e.size < 2:
            raise ValueError("need at least two finite errors to fit a Gaussian")
        return cls(mean=float(e.mean()), var=max(float(e.var()), MIN_VARIANCE))

    def log_pdf(self, errors: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return log_pdf(np.asarray(errors, np.float64), self.mean, self.var)

    def band(self, threshold: float) -> float:
        """Half-width d of the error interval [mean - d, mean + d] whose log-PD >= threshold.

        Zero when even the mode scores below the threshold.
        """
        return float(band_half_width(np.float64(self.var), np.float64(threshold)))


def log_pdf(
    errors: npt.NDArray[np.float64],
    mean: float | npt.NDArray[np.float64],
    var: float | npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Elementwise Gaussian log density; mean and var may be per-element arrays."""
    return np.asarray(-0.5 * (_LOG_2PI + np.log(var) + (errors - mean) ** 2 / var))


def band_half_width(
    var: npt.NDArray[np.float64] | np.float64, threshold: npt.NDArray[np.float64] | np.float64
) -> npt.NDArray[np.float64]:
    """Solve log_pdf(mean + d) = threshold for d >= 0 (vectorised)."""
    sq = -2.0 * var * (threshold + 0.5 * (_LOG_2PI + np.log(var)))
    return np.asarray(np.sqrt(np.maximum(sq, 0.0)))
