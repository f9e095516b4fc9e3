"""A real l-step LSTM (Malhotra's full method) on a real series, through the shared engine."""

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from processor.dataset import read_csv, read_windows, with_windows
from processor.detect import loaded_from_outcome
from processor.engine import SCORED, Engine, Observation
from processor.evaluate import EvalConfig, file_errors
from processor.gaussian import MultivariateGaussian
from processor.model_store import load_version, save_version
from processor.nab.corpus import load_corpus
from processor.postprocess import PostProcess
from processor.train import TrainConfig, train
from tests.nab_data import MACHINE_TEMP, NAB_DIR, WINDOWS

pytestmark = pytest.mark.slow

STEPS, WINDOW = 3, 16


@pytest.fixture(scope="module")
def series():
    s = read_csv(MACHINE_TEMP)
    return with_windows(s, read_windows(WINDOWS, MACHINE_TEMP)).slice(0, 3000)


@pytest.fixture(scope="module")
def outcome(series):
    cfg = TrainConfig(window=WINDOW, units=8, epochs=2, batch_size=128, train_frac=0.4,
                      val_frac=0.4, steps=STEPS, season="none", verbose=0)
    return train([series], cfg, "test")


@pytest.fixture(scope="module")
def seasonal(series):
    """l steps and a season: the network also reads the values 48 rows before."""
    cfg = TrainConfig(window=WINDOW, units=8, epochs=2, batch_size=128, train_frac=0.4,
                      val_frac=0.4, steps=STEPS, season=48, verbose=0)
    return train([series], cfg, "test")


def stream(model, series, batch_size):
    engine = Engine(model)
    values = series.values
    cols = []
    for lo in range(0, len(values), batch_size):
        cols.append(engine.process([
            Observation(series.key, int(series.timestamps[i]), float(values[i]), 0, i)
            for i in range(lo, min(lo + batch_size, len(values)))]).columns)
    return {name: np.concatenate([getattr(c, name) for c in cols])
            for name in ("status", "log_pd", "scaled_error", "prediction", "band_low",
                         "band_high", "anomaly", "value")}


def test_network_predicts_l_values_and_profiles_hold_their_gaussian(outcome):
    md = outcome.metadata
    assert md.steps == STEPS and md.training["steps"] == STEPS
    assert outcome.network.output_shape == (None, STEPS)
    kw = outcome.per_key[0]
    assert kw.scaled_error.shape == (len(kw.targets), STEPS)
    ref = MultivariateGaussian.fit(kw.scaled_error[(kw.part == 0) & kw.clean])
    p = md.profiles[kw.key]
    np.testing.assert_array_equal(p.error_mean_vector, ref.mean)
    np.testing.assert_array_equal(p.error_cov, ref.cov)
    assert (p.error_mean, p.error_var) == (ref.mean[0], ref.cov[0, 0])
    assert md.default_profile.steps == STEPS


def test_engine_scores_do_not_depend_on_the_batch_and_match_training(outcome, series):
    model = loaded_from_outcome(outcome, Path("."))
    whole = stream(model, series, len(series.values))
    scored = whole["status"] == SCORED
    assert (~scored).sum() == WINDOW + STEPS - 1
    for size in (1, 7, 500):
        part = stream(model, series, size)
        for name, values in whole.items():
            np.testing.assert_array_equal(part[name], values, err_msg=f"{name}, batch {size}")
    np.testing.assert_allclose(whole["log_pd"][scored], outcome.log_pd[series.key],
                               rtol=1e-5, atol=1e-5)
    # Anomalies are exactly the values outside their band.
    v = whole["value"][scored]
    outside = (v < whole["band_low"][scored]) | (v > whole["band_high"][scored])
    np.testing.assert_array_equal(whole["anomaly"][scored], outside)


@pytest.mark.parametrize("which", ["outcome", "seasonal"])
def test_error_vectors_match_the_raw_network_outputs(which, series, request):
    outcome = request.getfixturevalue(which)
    model = loaded_from_outcome(outcome, Path("."))
    width = model.input_width  # WINDOW, or WINDOW + 48 - STEPS with the season
    assert width == (WINDOW if which == "outcome" else WINDOW + 48 - STEPS)
    got = stream(model, series, 1000)
    p = outcome.metadata.profiles[series.key]
    mean, std = p.scale_mean, p.scale_std
    x32 = ((series.values.astype(np.float32) - mean) / std).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(x32, width)
    out = outcome.network.predict(windows[..., None], verbose=0).astype(np.float64)
    t = np.arange(width + STEPS - 1, len(x32))
    assert (got["status"] == SCORED).sum() == len(t)
    xs = (series.values - mean) / std
    # x_t against output j of the input ending at t - j (row t - j - width + 1).
    want = np.stack([xs[t] - out[t - j - width + 1, j - 1] for j in range(1, STEPS + 1)], 1)
    np.testing.assert_allclose(got["scaled_error"][t], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["prediction"][t], out[t - width, 0] * std + mean,
                               rtol=1e-5)
    lpd = stats.multivariate_normal(p.error_mean_vector, p.error_cov).logpdf(
        got["scaled_error"][t])
    np.testing.assert_allclose(got["log_pd"][t], lpd, rtol=1e-9)


def test_saved_version_loads_with_its_steps(outcome, series, tmp_path):
    loaded = load_version(save_version(tmp_path, outcome.metadata, outcome.network))
    assert loaded.steps == STEPS and loaded.predictor.steps == STEPS
    a = stream(loaded, series, 1000)
    b = stream(loaded_from_outcome(outcome, Path(".")), series, 1000)
    np.testing.assert_allclose(a["log_pd"], b["log_pd"], rtol=1e-6, equal_nan=True)


def test_evaluation_streams_error_vectors():
    name = "artificialWithAnomaly/art_daily_jumpsup.csv"
    cf = load_corpus(NAB_DIR, [name])[name]
    fe = file_errors(cf, EvalConfig(window=WINDOW, units=8, epochs=2, retrain="none",
                                    steps=STEPS, season="none"))
    assert fe.vectors is not None and fe.cov is not None and fe.vector_mean is not None
    assert fe.vectors.shape == (len(cf.values), STEPS)
    np.testing.assert_array_equal(np.isnan(fe.vectors).any(axis=1), np.isnan(fe.error))
    np.testing.assert_allclose(fe.vectors[:, 0], fe.error, rtol=1e-6, atol=1e-9,
                               equal_nan=True)
    s = fe.scores(PostProcess(horizon=500, group=50))
    assert s.shape == (len(cf.values),) and np.all((s >= 0) & (s < 1))
