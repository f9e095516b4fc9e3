"""From a key's stream of scaled prediction errors to NAB-style anomaly scores in [0, 1].

Pure and causal: the score of row t uses rows up to t only. The steps, each optional:

- `horizon`: fit the error Gaussian on the last `horizon` errors (a rolling MLE) instead
  of using the one fitted at training time, so a level shift the model has not learned
  stops looking anomalous after a while, as operators expect;
- `smooth`: average |z| over the last `smooth` rows, so one noisy error does not fire but
  a run of large ones does (telemanom smooths errors the same way);
- `calibrate`: score |z| against this key's own recent errors, r = |z| / (the `calibrate`
  quantile of the last `calibrate_rows` |z|), reported as r / (1 + r): 0.5 is an error as
  large as the key's recent one-in-a-thousand (for 0.999). The Gaussian's tail
  probability is then read relative to how heavy this key's tails turned out to be,
  which is what one corpus-wide alert threshold needs;
- `group`: a row only counts when its score exceeds every score of the previous `group`
  rows, so one incident raises one alert rather than a burst.

With l-step errors (a vector per row) the same steps run on an equivalent |z|: the
normal deviate with the same two-sided tail probability as the row's squared Mahalanobis
distance, which is chi-squared with l degrees of freedom (`vector_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import gammaln, log_ndtr, ndtri_exp
from scipy.stats import chi2

from processor.gaussian import MIN_VARIANCE, mahalanobis_sq, whitening

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PostProcess:
    horizon: int = 0
    smooth: int = 1
    group: int = 0
    likelihood: int = 0  # rows of score history; 0: report the tail score itself
    likelihood_avg: int = 10
    calibrate: float = 0.0  # quantile of recent |z| that scores 0.5; 0: off
    calibrate_rows: int = 2000

    def label(self) -> str:
        text = f"horizon={self.horizon} smooth={self.smooth} group={self.group}"
        if self.calibrate:
            text += f" calibrate={self.calibrate}/{self.calibrate_rows}"
        if self.likelihood:
            text += f" likelihood={self.likelihood}/{self.likelihood_avg}"
        return text


def tail_score(z: F64) -> F64:
    """u / (1 + u) with u = -log10 of the two-sided Gaussian tail probability of |z|.

    Monotone in |z| (so in log-PD), 0.5 at p = 0.1, and, computed in log space, it keeps
    ordering extreme errors: `1 - p` rounds to exactly 1.0 beyond |z| = 8.3, and NAB's
    threshold sweep cannot separate a thousand ties at 1.0.
    """
    log_p = np.log(2.0) + log_ndtr(-np.abs(z))
    u = np.maximum(-log_p / np.log(10.0), 0.0)
    return np.asarray(u / (1.0 + u))


def _min_rows(horizon: int) -> int:
    """Past errors needed before a rolling fit replaces the trained Gaussian: a quarter
    of the horizon, at least 10, and never more than the horizon holds."""
    return min(horizon, max(10, horizon // 4))


def standardised(errors: F64, mean: F64, var: F64, horizon: int) -> F64:
    """z of each error under the model's Gaussian, or a rolling one of the last rows.

    NaN errors (rows without a prediction) stay NaN and are skipped by the rolling fit.
    """
    if horizon <= 0:
        return np.asarray((errors - mean) / np.sqrt(var))
    s = pd.Series(errors)
    past = s.shift(1).rolling(horizon, min_periods=_min_rows(horizon))
    mu = past.mean().to_numpy()
    sd = past.std(ddof=0).to_numpy()
    # Until enough past errors exist, fall back to the trained Gaussian.
    mu = np.where(np.isnan(mu), mean, mu)
    sd = np.where(np.isnan(sd) | (sd <= 0), np.sqrt(var), sd)
    return np.asarray((errors - mu) / sd)


def scores(errors: F64, mean: F64, var: F64, pp: PostProcess) -> F64:
    """Per-row anomaly scores; rows without an error score 0."""
    return scores_from_z(np.abs(standardised(errors, mean, var, pp.horizon)), pp)


def scores_from_z(z: F64, pp: PostProcess) -> F64:
    """Smoothing, tail score and grouping of per-row |z| (NaN: no error, score 0)."""
    if pp.smooth > 1:
        z = pd.Series(z).rolling(pp.smooth, min_periods=1).mean().to_numpy()
    if pp.calibrate:
        out = calibrated_score(z, pp.calibrate, pp.calibrate_rows)
    else:
        out = np.nan_to_num(tail_score(z), nan=0.0)
    if pp.likelihood > 0:
        out = log_likelihood(out, pp.likelihood, pp.likelihood_avg)
    if pp.group > 0:
        out = group_incidents(out, pp.group)
    return out


#: Past errors needed before `calibrated_score` reports anything (a quantile of fewer
#: rows would be one of the few largest errors seen, i.e. noise).
CALIBRATION_MIN_ROWS = 100


def calibrated_score(z: F64, quantile: float, rows: int) -> F64:
    """r / (1 + r), r = |z| over the `quantile` of the previous `rows` |z| (causal).

    Monotone in |z| at each row, so in log-PD. Scale-free: a key whose errors are all
    twice as large scores the same. NaN (no error, or too little history) scores 0.
    """
    s = pd.Series(np.abs(z))
    past = s.shift(1).rolling(rows, min_periods=CALIBRATION_MIN_ROWS)
    ref = past.quantile(quantile, interpolation="linear").to_numpy()
    r = s.to_numpy() / np.maximum(ref, MIN_VARIANCE)
    return np.asarray(np.nan_to_num(r / (1.0 + r), nan=0.0))


#: Floor on the variance of averaged scores (as in Numenta's anomaly likelihood), so a
#: stretch of identical scores does not make the next small change look infinitely rare.
LIKELIHOOD_MIN_VAR = 0.0003


def log_likelihood(raw: F64, history: int, avg: int) -> F64:
    """How unusual the recent average score is for this key: Numenta's anomaly likelihood.

    The mean of the last `avg` raw scores is compared with a Gaussian fitted to those
    averages over the previous `history` rows (causal); the upper-tail probability q of
    the current average becomes log(q) / log(1e-10), clipped to [0, 1], so 0.5 means one
    in 10^5. A key whose errors are always large stops alerting; a run of errors larger
    than this key's usual ones alerts even when each is modest.
    """
    s = pd.Series(raw)
    short = s.rolling(avg, min_periods=1).mean()
    past = short.shift(1).rolling(history,
                                  min_periods=min(history, max(avg * 2, min(history, 100))))
    mu = past.mean().to_numpy()
    var = np.maximum(past.var(ddof=0).to_numpy(), LIKELIHOOD_MIN_VAR)
    zz = (short.to_numpy() - mu) / np.sqrt(var)
    log_q = log_ndtr(-zz)
    out = np.clip(log_q / np.log(1e-10), 0.0, 1.0)
    return np.asarray(np.nan_to_num(out, nan=0.0))


def group_incidents(score: F64, rows: int) -> F64:
    """Zero every score not above the maximum of the previous `rows` scores."""
    s = pd.Series(score)
    prev_max = s.shift(1).rolling(rows, min_periods=1).max().fillna(-np.inf).to_numpy()
    return np.where(score > prev_max, score, 0.0)


# -- l-step error vectors -----------------------------------------------------------------

def _chi2_logsf(x: F64, dims: int) -> F64:
    """log P(chi2(dims) > x), finite far into the tail where `chi2.logsf` gives -inf.

    There the asymptotic series of the upper incomplete gamma function,
    Gamma(a, y) ~ y^(a-1) e^(-y) sum_k (a-1)(a-2)...(a-k) / y^k, is exact to rounding.
    """
    out = np.asarray(chi2.logsf(x, dims), np.float64)
    far = np.isfinite(x) & np.isneginf(out)
    if far.any():
        a, y = dims / 2.0, x[far] / 2.0
        term = np.ones_like(y)
        total = np.ones_like(y)
        for k in range(1, 12):
            term = term * (a - k) / y
            total = total + term
        out[far] = (a - 1.0) * np.log(y) - y - gammaln(a) + np.log(total)
    return out


def equivalent_z(m2: F64, dims: int) -> F64:
    """|z| whose two-sided normal tail probability equals that of chi2(dims) beyond the
    squared Mahalanobis distance `m2`: the same scale as the one-step |z|, which it equals
    for dims = 1. Worked in log space so extreme rows stay finite and ordered."""
    log_p = _chi2_logsf(np.asarray(m2, np.float64), dims)
    return np.asarray(-ndtri_exp(log_p - np.log(2.0)))


def rolling_gaussians(errors: F64, horizon: int) -> tuple[F64, F64, npt.NDArray[np.int64]]:
    """Mean (n, l) and ML covariance (n, l, l) of the error vectors of rows t-horizon .. t-1.

    Causal, like the one-step rolling fit: row t never sees its own error. Rows with a NaN
    component are skipped; the count of rows used comes back too (zero: NaN estimates).
    Built from cumulative sums of e and e e^T, after centring on the overall mean so the
    differences of large sums do not cancel away the covariance.
    """
    n, dims = errors.shape
    valid = np.asarray(np.isfinite(errors).all(axis=1))
    centre = errors[valid].mean(axis=0) if valid.any() else np.zeros(dims)
    e = np.where(valid[:, None], errors - centre, 0.0)
    s1 = np.concatenate([np.zeros((1, dims)), np.cumsum(e, axis=0)])
    s2 = np.concatenate([np.zeros((1, dims, dims)),
                         np.cumsum(e[:, :, None] * e[:, None, :], axis=0)])
    c = np.concatenate([[0], np.cumsum(valid)])
    t = np.arange(n)
    lo = np.maximum(t - horizon, 0)
    count = (c[t] - c[lo]).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (s1[t] - s1[lo]) / count[:, None]
        cov = (s2[t] - s2[lo]) / count[:, None, None] - mean[:, :, None] * mean[:, None, :]
    return mean + centre, cov, count


def standardised_vectors(errors: F64, mean: F64, cov: F64, horizon: int) -> F64:
    """Equivalent |z| of each error vector under the model's Gaussian or a rolling one.

    `mean` (n, l) and `cov` (n, l, l) are the trained Gaussian active at each row. With a
    horizon, rows with at least `_min_rows(horizon)` earlier vectors in the last
    `horizon` rows and a positive definite estimate use the rolling fit instead.
    """
    dims = errors.shape[1]
    if horizon > 0:
        r_mean, r_cov, count = rolling_gaussians(errors, horizon)
        ok = np.asarray(count >= _min_rows(horizon))
        if ok.any():
            ok[ok] = np.linalg.eigvalsh(r_cov[ok])[:, 0] > MIN_VARIANCE
        mean = np.where(ok[:, None], r_mean, mean)
        cov = np.where(ok[:, None, None], r_cov, cov)
    whiten, _ = whitening(cov)
    return equivalent_z(mahalanobis_sq(errors, mean, whiten), dims)


def vector_scores(errors: F64, mean: F64, cov: F64, pp: PostProcess) -> F64:
    """`scores` for l-step error vectors (n, l); rows without an error score 0."""
    return scores_from_z(standardised_vectors(errors, mean, cov, pp.horizon), pp)
