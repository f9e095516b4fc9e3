"""Champion and challenger: is a freshly trained version at least as good as the live one?

Both are judged on the same recent data the challenger held out (its validation and test
parts, never trained on): the mean squared one-step prediction error, each key measured
in that key's own scale (the challenger's scaler) so keys weigh alike whatever their units.
Windows near labelled anomalies are left out when labels exist. Lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from processor.model_store import LoadedModel
from processor.scoring import score_windows
from processor.train import KeyWindows


@dataclass(frozen=True)
class Verdict:
    champion_version: str | None
    champion_mse: float | None
    challenger_mse: float
    publish: bool
    reason: str

    def metrics(self) -> dict[str, float | int | None]:
        return {"champion_mse": self.champion_mse, "challenger_mse": self.challenger_mse}


#: Held-out windows scored at once.
CHUNK = 8192


class WindowsTooShort(ValueError):
    """A version reads further back than the held-out windows reach."""


def held_out_mse(model: LoadedModel, per_key: Sequence[KeyWindows]) -> float:
    """Mean squared scaled error of `model` on the held-out clean windows of every key.

    The one-step error, whatever number of steps either version predicts, so versions
    with and without l-step prediction compare on the same footing; each model reads the
    newest values of the challenger's windows that it needs.
    """
    total, count = 0.0, 0
    for kw in per_key:
        mask = (kw.part > 0) & kw.clean
        if not mask.any():
            continue
        if kw.windows.shape[1] < model.history:
            raise WindowsTooShort(f"version {model.version} needs {model.history} values before "
                             f"each one, the held-out windows have {kw.windows.shape[1]}")
        rows = np.flatnonzero(mask)
        for lo in range(0, len(rows), CHUNK):  # windows can be hundreds of values wide
            part = rows[lo:lo + CHUNK]
            idx = model.table.lookup([kw.key] * len(part))
            windows = kw.windows[part][:, kw.windows.shape[1] - model.history:]
            s = score_windows(windows, kw.targets[part], idx, model.table, model.predictor)
            scaled = s.error / kw.scale[1]
            total += float(np.sum(scaled**2))
        count += len(rows)
    if count == 0:
        raise ValueError("no held-out windows to compare the versions on")
    return total / count


def judge(challenger: LoadedModel, champion: LoadedModel | None,
          per_key: Sequence[KeyWindows], force: bool = False,
          tolerance: float = 0.0) -> Verdict:
    """Publish when there is no champion, when forced, or when not worse (within tolerance)."""
    mse_new = held_out_mse(challenger, per_key)
    if champion is None:
        return Verdict(None, None, mse_new, True, "no current version")
    try:
        mse_old = held_out_mse(champion, per_key)
    except WindowsTooShort as exc:
        # the champion reads a season back and the new data's windows are shorter
        return Verdict(champion.version, None, mse_new, True,
                       f"not compared with {champion.version}: {exc}")
    better = mse_new <= mse_old * (1 + tolerance)
    reason = (f"challenger {mse_new:.4g} vs champion {mse_old:.4g} "
              f"({'not worse' if better else 'worse'})")
    if force and not better:
        reason += "; published anyway (--force)"
    return Verdict(champion.version, mse_old, mse_new, better or force, reason)
