"""The plot module: it reads scored output from files or objects and writes a usable PNG."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from processor.gaussian import band_half_width, log_pdf
from processor.plot import frame_from_records, load_scored, render
from schemas.records import ScoredRecord, Status

MEAN, VAR, SCALE = 0.05, 0.8, 2.0
THRESHOLD = float(log_pdf(np.array([MEAN + 3.5 * np.sqrt(VAR)]), MEAN, VAR)[0])
START = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)
FILLING, N, SPIKES = 24, 600, (150, 320, 321, 480)


def synthetic_records(key: str = "sensor-1") -> list[ScoredRecord]:
    """Sine + noise scored by a known Gaussian, with spikes and a window-filling prefix."""
    rng = np.random.default_rng(7)
    t = np.arange(N)
    prediction = 10 + 5 * np.sin(2 * np.pi * t / 144)
    noise = rng.normal(MEAN, np.sqrt(VAR), N) * SCALE
    noise[list(SPIKES)] += np.array([12.0, -15.0, 11.0, 40.0])
    value = prediction + noise
    half = float(band_half_width(np.float64(VAR), np.float64(THRESHOLD)))
    records = []
    for i in range(N):
        common = {"key": key, "timestamp": START + i * STEP, "value": float(value[i]),
                  "source_partition": 0, "source_offset": i}
        if i < FILLING:
            records.append(ScoredRecord(status=Status.WINDOW_FILLING, **common))
            continue
        error = float(value[i] - prediction[i])
        lpd = float(log_pdf(np.array([error / SCALE]), MEAN, VAR)[0])
        records.append(ScoredRecord(
            status=Status.SCORED, prediction=float(prediction[i]), error=error, log_pd=lpd,
            threshold=THRESHOLD, anomaly=lpd < THRESHOLD,
            band_low=float(prediction[i] + (MEAN - half) * SCALE),
            band_high=float(prediction[i] + (MEAN + half) * SCALE),
            profile="key", model_version="20240301T000000Z", **common,
        ))
    return records


def epoch_ms(index: int) -> int:
    return int((START + index * STEP).timestamp() * 1000)


@pytest.fixture(scope="module")
def records() -> list[ScoredRecord]:
    return synthetic_records()


def test_render_writes_a_png(records, tmp_path):
    frame = frame_from_records(records)
    assert frame["anomaly"].sum() >= len(SPIKES)
    out = render(frame, tmp_path / "nested" / "plot.png", windows=[(epoch_ms(310), epoch_ms(330))],
                 gaussian=(MEAN, VAR))
    assert out == tmp_path / "nested" / "plot.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000


def test_render_without_gaussian_or_scale_still_draws(records, tmp_path):
    out = render(frame_from_records(records), tmp_path / "plain.png", title="plain")
    assert out.stat().st_size > 20_000


def test_render_needs_a_key_for_several_keys(records, tmp_path):
    frame = pd.concat([frame_from_records(records),
                       frame_from_records(synthetic_records("sensor-2"))])
    with pytest.raises(ValueError, match=r"sensor-1, sensor-2.*key="):
        render(frame, tmp_path / "x.png")
    assert render(frame, tmp_path / "two.png", key="sensor-2").is_file()
    with pytest.raises(ValueError, match="not in frame"):
        render(frame, tmp_path / "y.png", key="nope")


def write_jsonl(records: list[ScoredRecord], path: Path) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(records: list[ScoredRecord], path: Path) -> Path:
    rows = [r.model_dump(mode="json") for r in records]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_load_scored_round_trips_jsonl_and_csv(records, tmp_path):
    shuffled = records[::-1]  # loading must sort by key then time
    from_jsonl = load_scored(write_jsonl(shuffled, tmp_path / "s.jsonl"))
    from_csv = load_scored(write_csv(shuffled, tmp_path / "s.csv"))
    expected = frame_from_records(records)
    for frame in (from_jsonl, from_csv):
        assert len(frame) == N
        assert str(frame["timestamp"].dt.tz) == "UTC"
        assert frame["timestamp"].is_monotonic_increasing
        assert frame["timestamp"].iloc[0] == pd.Timestamp(START)
        for column in ("value", "prediction", "log_pd", "band_low", "band_high"):
            np.testing.assert_allclose(frame[column], expected[column], equal_nan=True)
        assert frame["anomaly"].tolist() == expected["anomaly"].tolist()
        assert frame["status"].tolist() == expected["status"].tolist()


def test_missing_columns_and_files_are_clear_errors(records, tmp_path):
    rows = [json.loads(r.model_dump_json()) for r in records[:5]]
    for row in rows:
        del row["log_pd"], row["band_high"]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match="missing columns log_pd, band_high"):
        load_scored(path)
    with pytest.raises(ValueError, match="missing columns"):
        frame_from_records([{"key": "k", "timestamp": "2024-01-01T00:00:00Z"}])
    with pytest.raises(ValueError, match="no such file"):
        load_scored(tmp_path / "absent.csv")


def test_scale_is_recovered_from_the_band_width(records):
    from processor.plot import _infer_scale

    frame = frame_from_records(records)
    scored = frame[frame["status"] == "scored"]
    assert _infer_scale(scored, (MEAN, VAR)) == pytest.approx(SCALE)
    assert _infer_scale(scored, None) is None
