"""From a key's stream of scaled prediction errors to NAB-style anomaly scores in [0, 1].

Pure and causal: the score of row t uses rows up to t only. The steps, each optional:

- `horizon`: fit the error Gaussian on the last `horizon` errors (a rolling MLE) instead
  of using the one fitted at training time, so a level shift the model has not learned
  stops looking anomalous after a while, as operators expect;
- `smooth`: average |z| over the last `smooth` rows, so one noisy error does not fire but
  a run of large ones does (telemanom smooths errors the same way);
- `group`: a row only counts when its score exceeds every score of the previous `group`
  rows, so one incident raises one alert rather than a burst.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import log_ndtr

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PostProcess:
    horizon: int = 0
    smooth: int = 1
    group: int = 0

    def label(self) -> str:
        return f"horizon={self.horizon} smooth={self.smooth} group={self.group}"


def tail_score(z: F64) -> F64:
    """u / (1 + u) with u = -log10 of the two-sided Gaussian tail probability of |z|.

    Monotone in |z| (so in log-PD), 0.5 at p = 0.1, and, computed in log space, it keeps
    ordering extreme errors: `1 - p` rounds to exactly 1.0 beyond |z| = 8.3, and NAB's
    threshold sweep cannot separate a thousand ties at 1.0.
    """
    log_p = np.log(2.0) + log_ndtr(-np.abs(z))
    u = np.maximum(-log_p / np.log(10.0), 0.0)
    return np.asarray(u / (1.0 + u))


def standardised(errors: F64, mean: F64, var: F64, horizon: int) -> F64:
    """z of each error under the model's Gaussian, or a rolling one of the last rows.

    NaN errors (rows without a prediction) stay NaN and are skipped by the rolling fit.
    """
    if horizon <= 0:
        return np.asarray((errors - mean) / np.sqrt(var))
    s = pd.Series(errors)
    past = s.shift(1).rolling(horizon, min_periods=max(10, horizon // 4))
    mu = past.mean().to_numpy()
    sd = past.std(ddof=0).to_numpy()
    # Until enough past errors exist, fall back to the trained Gaussian.
    mu = np.where(np.isnan(mu), mean, mu)
    sd = np.where(np.isnan(sd) | (sd <= 0), np.sqrt(var), sd)
    return np.asarray((errors - mu) / sd)


def scores(errors: F64, mean: F64, var: F64, pp: PostProcess) -> F64:
    """Per-row anomaly scores; rows without an error score 0."""
    z = np.abs(standardised(errors, mean, var, pp.horizon))
    if pp.smooth > 1:
        z = pd.Series(z).rolling(pp.smooth, min_periods=1).mean().to_numpy()
    out = np.nan_to_num(tail_score(z), nan=0.0)
    if pp.group > 0:
        out = group_incidents(out, pp.group)
    return out


def group_incidents(score: F64, rows: int) -> F64:
    """Zero every score not above the maximum of the previous `rows` scores."""
    s = pd.Series(score)
    prev_max = s.shift(1).rolling(rows, min_periods=1).max().fillna(-np.inf).to_numpy()
    return np.where(score > prev_max, score, 0.0)
