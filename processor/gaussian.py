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


# -- l-step errors: a multivariate Gaussian ----------------------------------------------

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MultivariateGaussian:
    """Malhotra's model of l-step error vectors: mean vector and full covariance (MLE).

    The errors of one value against its l predictions are strongly correlated (the same
    value enters every component), so the covariance is kept whole, not just its diagonal.
    """

    mean: F64  # (l,)
    cov: F64  # (l, l)

    @classmethod
    def fit(cls, errors: npt.ArrayLike) -> MultivariateGaussian:
        """Sample mean and the biased (1/n) covariance of the rows that are all finite."""
        e = np.asarray(errors, dtype=np.float64)
        if e.ndim != 2:
            raise ValueError(f"expected error vectors of shape (n, l), got {e.shape}")
        e = e[np.isfinite(e).all(axis=1)]
        if len(e) < 2:
            raise ValueError("need at least two finite error vectors to fit a Gaussian")
        mean = e.mean(axis=0)
        d = e - mean
        return cls(mean=mean, cov=floor_covariance(d.T @ d / len(e)))

    @property
    def dims(self) -> int:
        return len(self.mean)

    def log_pdf(self, errors: npt.ArrayLike) -> F64:
        whiten, logdet = whitening(self.cov)
        return mv_log_pdf(np.asarray(errors, np.float64), self.mean, whiten, logdet)


def floor_covariance(cov: F64) -> F64:
    """Symmetric, with every variance at least MIN_VARIANCE (a flat series still scores)."""
    c = np.array((cov + np.swapaxes(cov, -1, -2)) / 2.0, np.float64)
    i = np.arange(c.shape[-1])
    c[..., i, i] = np.maximum(c[..., i, i], MIN_VARIANCE)
    return c


def whitening(cov: F64) -> tuple[F64, F64]:
    """W with W.T @ W = inverse(cov), and log det(cov), for one (l, l) matrix or a stack.

    From the eigendecomposition, eigenvalues floored at MIN_VARIANCE: it never fails, and
    a singular covariance (errors that always move together) still gives finite scores.
    """
    lam, vec = np.linalg.eigh(np.asarray(cov, np.float64))
    lam = np.maximum(lam, MIN_VARIANCE)
    whiten = np.swapaxes(vec / np.sqrt(lam)[..., None, :], -1, -2)
    return np.asarray(whiten), np.asarray(np.log(lam).sum(axis=-1))


def mahalanobis_sq(errors: F64, mean: F64, whiten: F64) -> F64:
    """Squared Mahalanobis distance of each row; parameters per row (n, ...) or shared.

    Written as an elementwise product and a sum, not a matrix product, so shared and
    per-row parameters round identically (training and streaming give the same log-PD).
    """
    d = errors - mean
    z = np.sum(whiten * d[..., None, :], axis=-1)
    return np.asarray(np.sum(z * z, axis=-1))


def mv_log_pdf(errors: F64, mean: F64, whiten: F64,
               logdet: F64 | float) -> F64:
    """Multivariate normal log density of each row of `errors` (n, l)."""
    dims = errors.shape[-1]
    return np.asarray(-0.5 * (dims * _LOG_2PI + logdet + mahalanobis_sq(errors, mean, whiten)))


def line_band(center: F64, whiten: F64, logdet: F64, threshold: F64) -> tuple[F64, F64]:
    """Where along x * (1, ..., 1) - center the log-PD stays >= threshold: (middle, half).

    An observed value x enters every component of its error vector (e_j = x - p_j), so
    the values that would score at or above the threshold form an interval in x: log-PD
    is a concave quadratic along that line. `center` is each row's predictions plus the
    error mean (n, l), all in scaled units. Half-width zero when even the best x scores
    below the threshold.
    """
    dims = center.shape[-1]
    u = whiten.sum(axis=-1)  # W @ 1
    v = np.sum(whiten * center[..., None, :], axis=-1)  # W @ center
    a = np.sum(u * u, axis=-1)
    middle = np.sum(u * v, axis=-1) / a
    closest = np.sum((v - middle[..., None] * u) ** 2, axis=-1)  # m^2 at x = middle
    radius_sq = -2.0 * threshold - dims * _LOG_2PI - logdet
    half = np.sqrt(np.maximum(radius_sq - closest, 0.0) / a)
    return np.asarray(middle), np.asarray(half)
