"""l-step prediction (Malhotra's full method) without a real network: scoring, streaming
state, metadata compatibility and the NAB post-processing of error vectors."""

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from processor.engine import SCORED, Engine, Observation
from processor.evaluate import EvalConfig, FileErrors, cached_errors
from processor.gaussian import MultivariateGaussian
from processor.model_store import LoadedModel, ModelMetadata
from processor.postprocess import (
    PostProcess,
    equivalent_z,
    rolling_gaussians,
    scores,
    standardised,
    standardised_vectors,
    vector_scores,
)
from processor.scoring import Profile, ProfileTable, score_windows
from processor.train import TrainConfig
from schemas.records import Status

W, L = 4, 3
COV = [[0.5, 0.3, 0.2], [0.3, 0.6, 0.35], [0.2, 0.35, 0.8]]


class StepsAhead:
    """Stand-in l-step network: output k of a window is its last value + (k + 1) * its
    slope, so a mix-up of windows or outputs changes the errors."""

    window = W

    def __call__(self, windows):
        x = np.asarray(windows, np.float64)
        slope = x[:, -1] - x[:, -2]
        return (x[:, -1, None] + np.arange(1, L + 1) * slope[:, None]).astype(np.float32)


def profile(threshold=-6.0, **scale):
    return Profile(scale_mean=scale.get("mean", 10.0), scale_std=scale.get("std", 2.0),
                   error_mean=0.1, error_var=COV[0][0], threshold=threshold,
                   error_mean_vector=[0.1, 0.0, -0.1], error_cov=COV)


def model(threshold=-6.0):
    key, default = profile(threshold), profile(threshold, mean=0.0, std=1.0)
    md = ModelMetadata.model_construct(name="m", version="v1", window=W, steps=L,
                                       profiles={"a": key}, default_profile=default,
                                       threshold=threshold, threshold_method="test")
    return LoadedModel(md, ProfileTable({"a": key}, default), StepsAhead(), Path("."))


def series(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return 10.0 + np.cumsum(rng.normal(0, 0.5, n))


def run(engine, values, batch_size, key="a", t0=0):
    cols = []
    for lo in range(0, len(values), batch_size):
        batch = [Observation(key, t0 + i, float(values[i]), 0, t0 + i)
                 for i in range(lo, min(lo + batch_size, len(values)))]
        cols.append(engine.process(batch).columns)
    return cols


def stacked(cols, name):
    return np.concatenate([getattr(c, name) for c in cols])


def test_window_fills_for_w_plus_l_minus_1_values_then_scores_l_errors():
    values = series()
    cols = run(Engine(model()), values, 1000)
    status = stacked(cols, "status")
    assert (status[: W + L - 1] != SCORED).all() and (status[W + L - 1 :] == SCORED).all()
    # Direct: error j of x_t is against output j of the window ending at t - j.
    xs = (values - 10.0) / 2.0
    # The network sees float32 values scaled from the float32 window store.
    x32 = ((values.astype(np.float32) - 10.0) / 2.0).astype(np.float32)
    out = StepsAhead()(np.lib.stride_tricks.sliding_window_view(x32, W)).astype(np.float64)
    t = np.arange(W + L - 1, len(values))
    want = np.stack([xs[t] - out[t - j - W + 1, j - 1] for j in range(1, L + 1)], axis=1)
    got = stacked(cols, "scaled_error")[t]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    g = MultivariateGaussian(np.array([0.1, 0.0, -0.1]), np.array(COV))
    np.testing.assert_allclose(stacked(cols, "log_pd")[t], g.log_pdf(got), rtol=1e-12)
    np.testing.assert_allclose(
        stacked(cols, "log_pd")[t],
        stats.multivariate_normal([0.1, 0.0, -0.1], COV).logpdf(got), rtol=1e-10)
    # prediction and error on the wire are the one-step ones.
    np.testing.assert_allclose(stacked(cols, "prediction")[t], out[t - W, 0] * 2.0 + 10.0,
                               rtol=1e-12)
    np.testing.assert_allclose(stacked(cols, "error")[t],
                               values[t] - stacked(cols, "prediction")[t], rtol=1e-12)


def test_scores_do_not_depend_on_batch_size_or_a_restore():
    values = series(80)
    whole = run(Engine(model()), values, 1000)
    names = ["log_pd", "prediction", "band_low", "band_high", "scaled_error"]
    for size in (1, 7, 33):
        parts = run(Engine(model()), values, size)
        for name in names:
            np.testing.assert_array_equal(stacked(parts, name), stacked(whole, name))
    # Exactly-once restore: a fresh engine given the committed window state goes on alike.
    first = Engine(model())
    run(first, values[:37], 1000)
    state = first.windows.state("a")
    assert state is not None and len(state.values) == W + L - 1
    second = Engine(model())
    second.windows.put("a", state)
    rest = run(second, values[37:], 1000, t0=37)
    for name in names:
        np.testing.assert_array_equal(stacked(rest, name), stacked(whole, name)[37:])


def test_band_holds_exactly_the_values_that_are_not_anomalous():
    values = series(80, seed=4)
    values[50] += 6.0
    cols = run(Engine(model(threshold=-5.0)), values, 1000)
    done = stacked(cols, "status") == SCORED
    low, high = stacked(cols, "band_low")[done], stacked(cols, "band_high")[done]
    anomaly = stacked(cols, "anomaly")[done]
    outside = (values[done] < low) | (values[done] > high)
    assert anomaly.any() and (~anomaly).any()
    np.testing.assert_array_equal(anomaly, outside)
    records = [r for c in cols for r in c.records()]
    assert records[50].anomaly and records[50].status == Status.SCORED


def test_switching_steps_resizes_the_windows():
    values = series(30)
    one_step = model().metadata.model_copy(update={"steps": 1})
    plain = Profile(scale_mean=10.0, scale_std=2.0, error_mean=0.0, error_var=1.0,
                    threshold=-6.0)
    engine = Engine(LoadedModel(one_step, ProfileTable({"a": plain}, plain),
                                lambda x: x[:, -1], Path(".")))
    assert engine.windows.width == W
    run(engine, values[:20], 1000)
    engine.set_model(model())
    assert engine.windows.width == W + L - 1
    nxt = run(engine, values[20:], 1000, t0=20)[0]
    # Only W values were kept: the key refills its longer history before scoring again.
    assert (nxt.status[: L - 1] != SCORED).all() and (nxt.status[L - 1 :] == SCORED).all()


def test_one_step_profiles_and_metadata_keep_their_format():
    plain = Profile(scale_mean=1.0, scale_std=2.0, error_mean=0.0, error_var=1.0,
                    threshold=-5.0)
    assert set(json.loads(plain.model_dump_json())) == {
        "scale_mean", "scale_std", "error_mean", "error_var", "threshold", "interval_ms"}
    assert plain.steps == 1 and ProfileTable({}, plain).steps == 1
    # Metadata written before l-step prediction existed loads as one step.
    old = {"name": "m", "version": "v1", "created_at": "2026-01-01T00:00:00Z", "window": 5,
           "units": 4, "layers": 1, "profiles": {"a": json.loads(plain.model_dump_json())},
           "default_profile": json.loads(plain.model_dump_json()), "threshold": -5.0,
           "threshold_method": "test",
           "data_range": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z",
                          "rows": 10, "source": "x"}}
    md = ModelMetadata.model_validate_json(json.dumps(old))
    assert md.steps == 1
    vec = profile()
    assert Profile.model_validate_json(vec.model_dump_json()) == vec and vec.steps == L
    with pytest.raises(ValueError, match="disagree"):
        ProfileTable({"a": vec}, plain)
    with pytest.raises(ValidationError):
        Profile(scale_mean=1.0, scale_std=1.0, error_mean=0.0, error_var=1.0,
                threshold=-5.0, error_mean_vector=[0.0, 0.0])
    with pytest.raises(ValidationError):
        TrainConfig(steps=0)


def test_score_windows_refuses_windows_too_short_for_the_steps():
    table = ProfileTable({}, profile())
    with pytest.raises(ValueError, match="too short"):
        score_windows(np.zeros((2, L - 1), np.float32), np.zeros(2), np.zeros(2, np.int64),
                      table, StepsAhead())


# -- post-processing of error vectors ----------------------------------------------------

def test_equivalent_z_is_monotone_and_equals_abs_z_for_one_step():
    z = np.linspace(0, 60, 2001)
    np.testing.assert_allclose(equivalent_z(z**2, 1), z, rtol=1e-9, atol=1e-12)
    m2 = np.concatenate([np.linspace(0, 5000, 50001), [1e4, 1e5, 1e7, 1e9]])
    for dims in (2, 3, 5):
        eq = equivalent_z(m2, dims)
        assert np.all(np.isfinite(eq)) and np.all(np.diff(eq) > 0)
        # Same tail probability, where scipy's tail does not underflow.
        mid = (m2 > 0) & (m2 < 1000)
        np.testing.assert_allclose(stats.chi2.logsf(m2[mid], dims),
                                   np.log(2) + stats.norm.logsf(eq[mid]), rtol=1e-9)
    assert np.isnan(equivalent_z(np.array([np.nan]), 3)[0])


def test_rolling_fit_matches_a_direct_computation_per_row():
    rng = np.random.default_rng(5)
    e = rng.normal(size=(60, 3)) @ np.array(COV) + 3.0
    e[[4, 17, 18, 40]] = np.nan
    e[25, 1] = np.nan
    horizon = 12
    mean, cov, count = rolling_gaussians(e, horizon)
    for t in range(len(e)):
        past = e[max(t - horizon, 0) : t]
        past = past[np.isfinite(past).all(axis=1)]
        assert count[t] == len(past)
        if len(past) == 0:
            continue
        np.testing.assert_allclose(mean[t], past.mean(axis=0), rtol=1e-10, atol=1e-12)
        d = past - past.mean(axis=0)
        np.testing.assert_allclose(cov[t], d.T @ d / len(past), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("horizon", [0, 50])
def test_vector_scores_of_one_step_equal_the_one_step_scores(horizon):
    rng = np.random.default_rng(6)
    e = rng.standard_t(4, 400) * 0.3
    e[[0, 1, 2, 100]] = np.nan
    mean, var = np.full(400, 0.05), np.full(400, 0.2)
    np.testing.assert_allclose(
        standardised_vectors(e[:, None], mean[:, None], var[:, None, None], horizon),
        np.abs(standardised(e, mean, var, horizon)), rtol=1e-7, equal_nan=True)
    pp = PostProcess(horizon=horizon, smooth=3, group=20)
    np.testing.assert_allclose(vector_scores(e[:, None], mean[:, None], var[:, None, None], pp),
                               scores(e, mean, var, pp), rtol=1e-7, atol=1e-12)


def test_rolling_vector_fit_falls_back_to_the_trained_gaussian():
    e = np.random.default_rng(7).normal(size=(30, 2))
    mean, cov = np.zeros((30, 2)), np.broadcast_to(np.eye(2), (30, 2, 2))
    z = standardised_vectors(e, mean, cov, horizon=100)  # min_periods = 25
    trained = standardised_vectors(e, mean, cov, horizon=0)
    np.testing.assert_array_equal(z[:25], trained[:25])
    assert not np.allclose(z[25:], trained[25:])


def test_error_cache_keeps_the_one_step_format_and_adds_steps(tmp_path, monkeypatch):
    import processor.evaluate as ev

    n = 20
    one = FileErrors(np.arange(n, dtype=float), np.zeros(n), np.ones(n))
    three = FileErrors(np.arange(n, dtype=float), np.zeros(n), np.ones(n),
                       np.ones((n, 3)), np.zeros((n, 3)), np.tile(np.eye(3), (n, 1, 1)))
    made = {1: one, 3: three}
    monkeypatch.setattr(ev, "file_errors", lambda cf, cfg: made[cfg.steps])

    class File:
        name = "cat/x.csv"
        timestamps = np.arange(n).astype("datetime64[m]")
        values = np.zeros(n)

    for steps, fe in made.items():
        cfg = EvalConfig(steps=steps)
        cached_errors(File(), cfg, tmp_path)  # computes and stores
        monkeypatch.setattr(ev, "file_errors", None)  # from now on only the cache answers
        got = cached_errors(File(), cfg, tmp_path)
        monkeypatch.setattr(ev, "file_errors", lambda cf, cfg: made[cfg.steps])
        for name in ("error", "mean", "var", "vectors", "vector_mean", "cov"):
            want = getattr(fe, name)
            assert (getattr(got, name) is None) == (want is None)
            if want is not None:
                np.testing.assert_array_equal(getattr(got, name), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "w30-u32-e30-doubling-s0-l3-season-day-gap24", "w30-u32-e30-doubling-s0-season-day-gap24"]
    with np.load(tmp_path / "w30-u32-e30-doubling-s0-season-day-gap24" / "cat__x.csv.npz") as data:
        assert sorted(data.files) == ["error", "fingerprint", "mean", "rule", "var"]
    pp = PostProcess()
    np.testing.assert_array_equal(one.scores(pp), scores(one.error, one.mean, one.var, pp))
    assert three.scores(pp).shape == (n,)


def test_error_cache_is_recomputed_for_other_data(tmp_path, monkeypatch):
    import processor.evaluate as ev

    n = 20
    calls = []

    def compute(cf, cfg):
        calls.append(cf.values.copy())
        return FileErrors(cf.values.copy(), np.zeros(n), np.ones(n))

    monkeypatch.setattr(ev, "file_errors", compute)

    class File:
        name = "cat/x.csv"
        timestamps = np.arange(n).astype("datetime64[m]")
        values = np.zeros(n)

    cfg = EvalConfig()
    cached_errors(File(), cfg, tmp_path)
    cached_errors(File(), cfg, tmp_path)
    assert len(calls) == 1  # the same data: from the cache
    edited = File()
    edited.values = np.ones(n)  # same name and settings, other data
    got = cached_errors(edited, cfg, tmp_path)
    assert len(calls) == 2
    np.testing.assert_array_equal(got.error, np.ones(n))
    assert ev._cached(edited, cfg, tmp_path) and not ev._cached(File(), cfg, tmp_path)


def test_steps_flags():
    from processor.cli import build_parser

    parser = build_parser()
    for command in (["train", "--csv", "x.csv"], ["detect", "x.csv"]):
        assert parser.parse_args([*command, "--steps", "3"]).cfg_steps == "3"
    assert parser.parse_args(["evaluate", "--steps", "3"]).steps == 3
    assert parser.parse_args(["evaluate"]).steps == 1

