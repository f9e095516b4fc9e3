"""One PNG per series that shows what the detector saw, predicted and flagged.

Panels: values against the prediction and its normal band (where anomalies stand out,
and alerts are ringed), the log-PD against the model's threshold (how close calls were),
the anomaly score the alerts come from against the alert score (when the records carry
it), and the scaled errors against the fitted Gaussian (whether the error model still
fits the data).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs or opens a display

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.axes import Axes

from processor.gaussian import band_half_width, log_pdf
from schemas.records import ScoredRecord, Status

#: The columns the plot reads; the rest of a ScoredRecord is carried along if present.
_FLOAT_COLUMNS = ("value", "prediction", "error", "log_pd", "threshold", "band_low", "band_high")
REQUIRED_COLUMNS = ("key", "timestamp", "status", "anomaly", *_FLOAT_COLUMNS)
_STYLE: dict[Any, Any] = {"axes.grid": True, "grid.alpha": 0.3, "legend.framealpha": 0.85}
_BAND_LABEL = "normal band (log-PD >= threshold)"
_ANOMALY = "#d62728"
_ALERT = "#6a0dad"
F64 = npt.NDArray[np.float64]


def load_scored(path: Path) -> pd.DataFrame:
    """Read scored records from JSON Lines (``.jsonl``) or CSV (``.csv``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return frame_from_records(_read_jsonl(path))
    if suffix == ".csv":
        # Keys such as "NA" must stay text; only empty fields are missing values.
        raw = pd.read_csv(path, dtype={"key": str}, keep_default_na=False, na_values=[""])
        return _normalise(raw, str(path))
    raise ValueError(f"{path}: expected a .jsonl or .csv file, got {suffix or 'no suffix'!r}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rows.extend([json.loads(line)] if line.strip() else [])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
    return rows


def frame_from_records(records: Iterable[ScoredRecord | dict[str, Any]]) -> pd.DataFrame:
    """Build the plotting frame from record objects, as they come off the scored topic."""
    rows = [r.model_dump(mode="json") if isinstance(r, ScoredRecord) else r for r in records]
    return _normalise(pd.DataFrame(rows), "records")


def _normalise(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check columns and give every source the same dtypes, so plots never depend on origin."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {', '.join(missing)}")
    frame = frame.copy()
    frame["key"] = frame["key"].astype(str)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    for column in _FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    # CSV gives "True"/"False" text, JSON gives booleans; both read the same.
    for flag in ("anomaly", "alert", "peak"):
        if flag in frame.columns:
            frame[flag] = frame[flag].astype(str).str.strip().str.lower().isin(["true", "1"])
        else:  # records from before the anomaly score existed
            frame[flag] = False
    score = frame["anomaly_score"] if "anomaly_score" in frame.columns else pd.Series(
        np.nan, index=frame.index)
    frame["anomaly_score"] = pd.to_numeric(score, errors="coerce").astype("float64")
    frame["status"] = frame["status"].astype(str)
    return frame.sort_values(["key", "timestamp"], kind="stable").reset_index(drop=True)


def render(
    frame: pd.DataFrame,
    out: Path,
    *,
    key: str | None = None,
    windows: Sequence[tuple[int, int]] = (),
    gaussian: tuple[float, float] | None = None,
    scale: float | None = None,
    title: str | None = None,
    alert_score: float | None = None,
) -> Path:
    """Write the PNG for one key and return its path.

    ``windows`` are labelled anomaly windows as inclusive epoch-millisecond pairs;
    ``gaussian`` is the error model's (mean, var) in scaled units; ``scale`` is the key's
    scaler std (inferred from the band width and ``gaussian`` when omitted);
    ``alert_score`` is drawn on the anomaly score panel.
    """
    key, series = _select_key(frame, key)
    scored = series[(series["status"] == Status.SCORED.value) & series["prediction"].notna()]
    pad_ms = _half_step_ms(series)
    # Only windows that overlap the plotted stretch: others would stretch the time axis.
    first, last = (int(t.timestamp() * 1000) for t in series["timestamp"].iloc[[0, -1]])
    windows = [(s, e) for s, e in windows if e >= first and s <= last]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(_STYLE):
        calibrated = bool(scored["anomaly_score"].notna().any())
        ratios = (3.0, 1.4, 1.2, 1.6) if calibrated else (3.0, 1.4, 1.6)
        fig = plt.figure(figsize=(14, 12 if calibrated else 10), dpi=110,
                         layout="constrained")
        try:
            grid = fig.add_gridspec(len(ratios), 1, height_ratios=ratios)
            ax_val = fig.add_subplot(grid[0])
            _values_panel(ax_val, series, scored, windows, pad_ms)
            _score_panel(fig.add_subplot(grid[1], sharex=ax_val), scored, windows, pad_ms)
            if calibrated:
                _calibrated_panel(fig.add_subplot(grid[2], sharex=ax_val), scored, windows,
                                  pad_ms, alert_score)
            _error_panel(fig.add_subplot(grid[-1]), scored, gaussian, scale)
            ax_val.set_title(title or _default_title(key, series))
            fig.savefig(out, dpi=110)
        finally:
            plt.close(fig)
    return out


def _select_key(frame: pd.DataFrame, key: str | None) -> tuple[str, pd.DataFrame]:
    keys = sorted(frame["key"].unique())
    if not keys:
        raise ValueError("no records to plot")
    if key is None:
        if len(keys) > 1:
            shown = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
            raise ValueError(f"frame holds {len(keys)} keys ({shown}); pass key= to choose one")
        key = keys[0]
    elif key not in keys:
        raise ValueError(f"key {key!r} not in frame (keys: {', '.join(keys[:10])})")
    return key, frame[frame["key"] == key]


def _default_title(key: str, series: pd.DataFrame) -> str:
    column = series.get("model_version", pd.Series(dtype=str))
    versions = sorted(column.dropna().astype(str).unique())
    n_scored = int((series["status"] == Status.SCORED.value).sum())
    return (f"{key}  |  model {', '.join(versions) or 'unknown'}  |  "
            f"{int(series['anomaly'].sum())} anomalies in {n_scored} scored values")


def _times(rows: pd.DataFrame) -> npt.NDArray[np.datetime64]:
    """Naive UTC datetime64: matplotlib's date axis handles it without pandas converters."""
    return np.asarray(rows["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy())


def _shade_windows(ax: Axes, windows: Sequence[tuple[int, int]], label: str | None,
                   pad_ms: float) -> None:
    """Windows are inclusive, so each span reaches half a sampling step past its ends."""
    for i, (start, end) in enumerate(windows):
        ax.axvspan(_date_num(start - pad_ms), _date_num(end + pad_ms), color="#ff9f43",
                   alpha=0.22, lw=0, zorder=0, label=label if i == 0 else None)


def _date_num(ms: float) -> float:
    """Matplotlib's date number (days since its epoch) for epoch milliseconds."""
    since = np.datetime64(round(ms), "ms") - np.datetime64(plt.rcParams["date.epoch"], "ms")
    return float(since / np.timedelta64(1, "D"))


def _half_step_ms(series: pd.DataFrame) -> float:
    steps = np.diff(series["timestamp"].to_numpy("datetime64[ms]").astype(np.int64))
    return float(np.median(steps)) / 2 if steps.size else 0.0


def _values_panel(ax: Axes, series: pd.DataFrame, scored: pd.DataFrame,
                  windows: Sequence[tuple[int, int]], pad_ms: float) -> None:
    filling = series[series["status"] != Status.SCORED.value]
    if len(scored):
        t = _times(scored)
        ax.fill_between(t, scored["band_low"].to_numpy(), scored["band_high"].to_numpy(),
                        color="#9ecae1", alpha=0.45, lw=0, label=_BAND_LABEL)
        ax.plot(t, scored["prediction"].to_numpy(), color="#1f77b4", lw=1.1, label="prediction")
        ax.scatter(t, scored["value"].to_numpy(), s=5, color="#222222", label="observed",
                   zorder=3)
    if len(filling):
        ax.scatter(_times(filling), filling["value"].to_numpy(), s=5, color="#9a9a9a",
                   label="observed (window filling, not scored)", zorder=3)
    hits = series[series["anomaly"]]
    ax.scatter(_times(hits), hits["value"].to_numpy(), s=36, color=_ANOMALY, edgecolor="white",
               lw=0.6, zorder=5, label=f"anomaly ({len(hits)})")
    alerts = series[series["alert"]]
    if len(alerts):
        ax.scatter(_times(alerts), alerts["value"].to_numpy(), s=150, facecolor="none",
                   edgecolor=_ALERT, lw=1.8, zorder=6, label=f"alert ({len(alerts)})")
    _shade_windows(ax, windows, "labelled anomaly window", pad_ms)
    ax.set_ylabel("value")
    ax.legend(loc="lower left", fontsize=8, ncols=3)
    ax.tick_params(labelbottom=False)


def _calibrated_panel(ax: Axes, scored: pd.DataFrame, windows: Sequence[tuple[int, int]],
                      pad_ms: float, alert_score: float | None) -> None:
    """The anomaly score (comparable across keys), peaks, and the alerts among them."""
    t = _times(scored)
    score = scored["anomaly_score"].to_numpy(np.float64)
    _shade_windows(ax, windows, None, pad_ms)
    ax.plot(t, score, color="#4a4a4a", lw=0.7, label="anomaly score")
    peak = scored["peak"].to_numpy(bool) & np.isfinite(score)
    ax.scatter(t[peak], score[peak], s=10, color="#8c8c8c", zorder=4, label="peak")
    alert = scored["alert"].to_numpy(bool)
    ax.scatter(t[alert], score[alert], s=40, color=_ALERT, zorder=5, label="alert")
    if alert_score is not None:
        ax.axhline(alert_score, color=_ALERT, ls="--", lw=1.2, label="alert score")
    ax.set_ylim(0, 1)
    ax.set_ylabel("anomaly score")
    ax.legend(loc="upper left", fontsize=8, ncols=4)
    ax.tick_params(labelbottom=False)


def _score_panel(ax: Axes, scored: pd.DataFrame, windows: Sequence[tuple[int, int]],
                 pad_ms: float) -> None:
    """log-PD against the threshold, with the y range clipped so the bulk stays readable."""
    t = _times(scored)
    lpd = scored["log_pd"].to_numpy(np.float64)
    thr = scored["threshold"].to_numpy(np.float64)
    _shade_windows(ax, windows, None, pad_ms)
    ax.plot(t, lpd, color="#4a4a4a", lw=0.7, label="log-PD")
    ax.step(t, thr, where="post", color=_ANOMALY, ls="--", lw=1.2, label="threshold")
    low, high = _score_limits(lpd, thr)
    ax.set_ylim(low, high)
    hit = scored["anomaly"].to_numpy(bool)
    clipped = np.isfinite(lpd) & (lpd < low)
    ax.scatter(t[hit & ~clipped], lpd[hit & ~clipped], s=20, color=_ANOMALY, zorder=5)
    if clipped.any():
        ax.scatter(t[clipped], np.full(clipped.sum(), low), marker="v", s=30, color=_ANOMALY,
                   zorder=5, clip_on=False)
        ax.annotate(f"{int(clipped.sum())} scores below {low:.1f} clipped (red triangles)",
                    xy=(0.005, 0.06), xycoords="axes fraction", fontsize=8, color=_ANOMALY,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85})
    ax.set_ylabel("log-PD")
    ax.set_xlabel("time (UTC)")
    ax.legend(loc="lower right", fontsize=8)


def _score_limits(lpd: F64, thr: F64) -> tuple[float, float]:
    """Lower edge near the 1st percentile, but never above the lowest threshold."""
    finite = lpd[np.isfinite(lpd)]
    if finite.size == 0:
        return (-1.0, 1.0)
    marks = np.concatenate([[np.percentile(finite, 1), finite.max()], thr[np.isfinite(thr)]])
    low, high = float(marks.min()), float(marks.max())
    span = high - low or 1.0
    return low - 0.18 * span, high + 0.06 * span


def _error_panel(ax: Axes, scored: pd.DataFrame, gaussian: tuple[float, float] | None,
                 scale: float | None) -> None:
    """Histogram of scaled errors, the Gaussian they are scored under, and its cut-offs.

    Scaled units are where the Gaussian and threshold live, so the fit is shown exactly;
    without a known or inferable scale the panel falls back to value units, edges from
    the bands.
    """
    error = scored["error"].to_numpy(np.float64)
    if scale is None:
        scale = _infer_scale(scored, gaussian)
    errors = error[np.isfinite(error)] / (1.0 if scale is None else scale)
    if errors.size == 0:
        ax.text(0.5, 0.5, "no scored values", ha="center", transform=ax.transAxes)
        return
    edges = _threshold_edges(scored, gaussian, scale)
    low, high = _hist_range(errors, edges)
    bins = int(np.clip(1.5 * math.sqrt(errors.size), 15, 80))
    ax.hist(errors, bins=bins, range=(low, high), density=True, color="#9ecae1",
            edgecolor="#6baed6", label=f"errors (n={errors.size})")
    if gaussian is not None and scale is not None:
        mean, var = gaussian
        x = np.linspace(low, high, 400)
        ax.plot(x, np.exp(log_pdf(x, mean, var)), color="#1f77b4", lw=1.6,
                label=f"Gaussian(mean={mean:.3g}, var={var:.3g})")
    if edges is not None:
        label = f"threshold edges ({edges[0]:.2f}, {edges[1]:.2f})"
        for i, edge in enumerate(edges):
            ax.axvline(edge, color=_ANOMALY, ls="--", lw=1.2, label=label if i == 0 else None)
    outside = int(((errors < low) | (errors > high)).sum())
    if outside:
        ax.annotate(f"{outside} errors outside the range not shown", xy=(0.005, 0.9),
                    xycoords="axes fraction", fontsize=8, color=_ANOMALY)
    units, xlabel = ("scaled", "error / scale") if scale is not None else ("value units", "error")
    ax.set_title(f"prediction errors ({units}) with fitted Gaussian and threshold", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(loc="upper right", fontsize=8)


def _hist_range(errors: F64, edges: tuple[float, float] | None) -> tuple[float, float]:
    """The central 99% of errors plus the threshold edges: outliers cannot squash the bulk."""
    low, high = (float(q) for q in np.percentile(errors, [0.5, 99.5]))
    if edges is not None:
        low, high = min(low, edges[0]), max(high, edges[1])
    pad = 0.1 * (high - low) or 1.0
    return low - pad, high + pad


def _infer_scale(scored: pd.DataFrame, gaussian: tuple[float, float] | None) -> float | None:
    """The band spans 2 d scaled units, so its width in value units over 2 d is the scale."""
    if gaussian is None:
        return None
    half = band_half_width(np.float64(gaussian[1]), scored["threshold"].to_numpy(np.float64))
    width = (scored["band_high"] - scored["band_low"]).to_numpy(np.float64)
    ok = np.isfinite(width) & np.isfinite(half) & (half > 0) & (width > 0)
    return float(np.median(width[ok] / (2 * half[ok]))) if ok.any() else None


def _threshold_edges(scored: pd.DataFrame, gaussian: tuple[float, float] | None,
                     scale: float | None) -> tuple[float, float] | None:
    """mean ± d from the Gaussian at the median threshold, else read off the bands."""
    thr = scored["threshold"].to_numpy(np.float64)
    thr = thr[np.isfinite(thr)]
    if gaussian is not None and scale is not None and thr.size:
        mean, var = gaussian
        d = float(band_half_width(np.float64(var), np.float64(np.median(thr))))
        return mean - d, mean + d
    offsets = scored[["band_low", "band_high"]].sub(scored["prediction"], axis=0).median()
    if offsets.isna().any():
        return None
    unit = 1.0 if scale is None else scale
    return float(offsets["band_low"]) / unit, float(offsets["band_high"]) / unit
