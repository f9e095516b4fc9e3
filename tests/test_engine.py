"""The streaming step with a stand-in predictor (pure logic; the real LSTM is tested elsewhere)."""

from pathlib import Path

import numpy as np
import pytest

from processor.engine import Engine, Observation
from processor.model_store import LoadedModel, ModelMetadata
from processor.scoring import Profile, ProfileTable
from schemas.records import DeadLetterReason, Status


class LastValue:
    """Predicts the last value of the window (a persistence forecast)."""

    window = 3

    def __call__(self, windows):
        return windows[:, -1].astype(np.float32)


def model(threshold=-5.0, version="v1", window=3):
    profile = Profile(scale_mean=10.0, scale_std=2.0, error_mean=0.0, error_var=0.25,
                      threshold=threshold)
    default = Profile(scale_mean=0.0, scale_std=1.0, error_mean=0.0, error_var=1.0,
                      threshold=threshold)
    md = ModelMetadata.model_construct(name="m", version=version, window=window,
                                       profiles={"a": profile}, default_profile=default,
                                       threshold=threshold, threshold_method="test")
    predictor = LastValue()
    predictor.window = window
    return LoadedModel(md, ProfileTable({"a": profile}, default), predictor, Path("."))


def obs(key, t, v):
    return Observation(key, t, v, 0, t)


def test_filling_then_scored_with_persistence_errors():
    engine = Engine(model())
    out = engine.process([obs("a", t, 10.0 + t) for t in range(5)])
    assert [r.status for r in out.scored] == [Status.WINDOW_FILLING] * 3 + [Status.SCORED] * 2
    r = out.scored[3]
    assert r.prediction == pytest.approx(12.0)
    assert r.error == pytest.approx(1.0)
    # scaled error 0.5 under N(0, 0.25): log-PD = -0.5*(log(2*pi*0.25) + 1)
    assert r.log_pd == pytest.approx(-0.5 * (np.log(2 * np.pi * 0.25) + 1.0))
    assert r.profile == "key" and r.model_version == "v1"
    assert r.band_low < r.prediction < r.band_high


def test_spike_is_anomalous_and_alerted_once_the_key_has_a_history():
    engine = Engine(model())
    rng = np.random.default_rng(0)
    values = 10.0 + rng.normal(0, 0.1, 400)
    values[50] += 5.0  # before the key has 100 scored errors: learnt, not scored
    values[250] += 30.0  # six times the largest error seen
    values[300] += 15.0  # half the spike 50 rows before: no new peak
    out = engine.process([obs("a", t, float(v)) for t, v in enumerate(values)])
    rec = out.scored
    assert rec[50].anomaly and rec[250].anomaly and rec[300].anomaly  # outside the band
    assert rec[50].anomaly_score is None and not rec[50].alert  # warming up: no score
    assert rec[250].anomaly_score == pytest.approx(6 / 7, abs=0.01)  # r / (1 + r), r ~ 6
    assert rec[250].peak and rec[250].alert
    # Its reference is now the spike at 250 itself: r ~ 1/2.
    assert rec[300].anomaly_score == pytest.approx(1 / 3, abs=0.01)
    assert not rec[300].peak and not rec[300].alert
    # One alert: the spike at 250 (its echo at 251, when the spike leaves the window and
    # the persistence forecast is off by as much, peaks no higher).
    assert [a.timestamp for a in out.alerts] == [rec[250].timestamp]
    assert out.alerts[0].value == pytest.approx(values[250])
    assert out.alerts[0].expected == pytest.approx(values[249])
    assert out.alerts[0].anomaly_score == rec[250].anomaly_score
    # The band says what would have been normal; the spike lies outside it.
    assert not rec[250].band_low <= values[250] <= rec[250].band_high


def test_anomaly_scores_are_comparable_across_keys_of_different_scale():
    """Two keys with the same pattern at scales a thousandfold apart score alike."""
    engine = Engine(model())
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 300)
    base[280] += 12
    rows = [obs(k, t, float(scale * base[t]))
            for t in range(300) for k, scale in (("a", 1.0), ("b", 1000.0))]
    out = engine.process(rows)
    a = [r.anomaly_score for r in out.scored if r.key == "a"]
    b = [r.anomaly_score for r in out.scored if r.key == "b"]
    assert a[280] is not None and a[280] > 0.5
    np.testing.assert_allclose(np.array(a[150:], float), np.array(b[150:], float), rtol=1e-4)


def test_unseen_key_uses_default_profile():
    engine = Engine(model())
    out = engine.process([obs("new", t, float(t)) for t in range(4)])
    assert out.scored[-1].profile == "default"


def test_duplicate_and_late_records_are_rejected():
    engine = Engine(model())
    batch = [obs("a", 5, 1.0), obs("a", 5, 2.0), obs("a", 4, 3.0), obs("a", 6, 4.0)]
    out = engine.process(batch)
    assert [r.source_offset for r in out.scored] == [5, 6]
    assert [(r.observation.value, r.reason) for r in out.rejected] == [
        (2.0, DeadLetterReason.DUPLICATE_TIMESTAMP), (3.0, DeadLetterReason.OUT_OF_ORDER)]
    # ... also across batches
    later = engine.process([obs("a", 6, 9.0)])
    assert later.rejected and not later.scored


def test_every_input_is_accounted_for():
    rng = np.random.default_rng(0)
    engine = Engine(model())
    batch = [obs(str(k), int(t), float(v)) for k, t, v in
             zip(rng.integers(0, 5, 300), rng.integers(0, 100, 300), rng.normal(size=300))]
    out = engine.process(batch)
    assert len(out.scored) + len(out.rejected) == len(batch)


def test_model_switch_keeps_windows_and_names_the_version():
    engine = Engine(model(version="v1"))
    engine.process([obs("a", t, 10.0) for t in range(3)])
    engine.set_model(model(version="v2"))
    out = engine.process([obs("a", 3, 10.0)])
    assert out.scored[0].status == Status.SCORED
    assert out.scored[0].model_version == "v2"


def test_long_gap_resets_the_window():
    m = model()
    profile = m.metadata.profiles["a"].model_copy(update={"interval_ms": 1.0})
    m.table = ProfileTable({"a": profile}, m.metadata.default_profile)
    engine = Engine(m, gap_reset_intervals=10)
    out = engine.process([obs("a", t, 10.0) for t in [0, 1, 2, 3, 4, 100, 101, 102, 103]])
    statuses = [r.status for r in out.scored]
    assert statuses[:5] == [Status.WINDOW_FILLING] * 3 + [Status.SCORED] * 2
    assert statuses[5] == Status.WINDOW_RESET
    assert statuses[6:] == [Status.WINDOW_FILLING] * 2 + [Status.SCORED]
    # Disabled: the gap is just another step.
    plain = Engine(m, gap_reset_intervals=0).process(
        [obs("a", t, 10.0) for t in [0, 1, 2, 3, 100]])
    assert plain.scored[-1].status == Status.SCORED


def test_fast_json_equals_the_pydantic_serialisation():
    import json

    from schemas.records import ScoredRecord

    m = model()
    profile = m.metadata.profiles["a"].model_copy(update={"interval_ms": 1.0})
    m.table = ProfileTable({"a": profile}, m.metadata.default_profile)
    engine = Engine(m, gap_reset_intervals=10)
    rng = np.random.default_rng(1)
    batch = [obs(k, t, float(v)) for t, (k, v) in enumerate(
        zip(rng.choice(["a", 'we"ird\\key', "ünï"], 60), rng.normal(10, 3, 60)))]
    batch.append(obs("a", 500, 1e30))  # after a gap: a window reset
    out = engine.process(batch)
    fast = out.columns.to_json()
    assert len(fast) == len(out.scored) == len(batch)
    for line, rec in zip(fast, out.scored):
        assert json.loads(line) == json.loads(rec.model_dump_json())
        assert ScoredRecord.model_validate_json(line) == rec
    assert {r.status for r in out.scored} == {Status.SCORED, Status.WINDOW_FILLING,
                                              Status.WINDOW_RESET}
