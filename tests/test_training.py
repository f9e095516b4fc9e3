"""A real Keras LSTM trained on a real series: the offline path end to end."""

import numpy as np
import pytest

from processor.dataset import read_csv, read_windows, with_windows
from processor.detect import loaded_from_outcome, score_series
from processor.engine import Engine
from processor.gaussian import Gaussian
from processor.model_store import ModelStoreError, load_version, save_version
from processor.train import TrainConfig, train
from tests.nab_data import MACHINE_TEMP, WINDOWS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def series():
    s = read_csv(MACHINE_TEMP)
    s = with_windows(s, read_windows(WINDOWS, MACHINE_TEMP))
    return s.slice(0, 6000)  # Dec 2 .. Dec 23: two labelled windows


@pytest.fixture(scope="module")
def outcome(series):
    cfg = TrainConfig(window=20, units=16, epochs=4, batch_size=128, train_frac=0.4,
                      val_frac=0.4, verbose=0)
    return train([series], cfg, "test")


def test_gaussian_is_fitted_to_clean_training_errors(outcome):
    kw = outcome.per_key[0]
    train_clean = kw.scaled_error[(kw.part == 0) & kw.clean]
    profile = outcome.metadata.profiles[kw.key]
    ref = Gaussian.fit(train_clean)
    assert (profile.error_mean, profile.error_var) == (ref.mean, ref.var)
    # Labelled stretches were kept out of training.
    assert (kw.label[(kw.part == 0) & kw.clean]).sum() == 0


def test_threshold_was_chosen_by_fbeta_on_validation(outcome):
    md = outcome.metadata
    assert md.threshold_method.startswith("max_fbeta")
    assert md.metrics["val_tp"] > 0  # validation holds a labelled window and some is found
    assert md.metrics["val_precision"] >= 0.5


def test_streaming_engine_reproduces_training_scores(outcome, series, tmp_path):
    """The trainer and the processor share windowing and scoring: same rows, same log-PD."""
    path = save_version(tmp_path, outcome.metadata, outcome.network)
    engine = Engine(loaded_from_outcome(outcome, path))
    result = score_series(engine, series, batch_size=333)
    streamed = np.array([r.log_pd for r in result.scored if r.log_pd is not None])
    offline = outcome.log_pd[series.key]
    assert len(streamed) == len(offline)
    np.testing.assert_allclose(streamed, offline, rtol=1e-5, atol=1e-5)


def test_saved_version_loads_and_predicts_the_same(outcome, tmp_path):
    path = save_version(tmp_path, outcome.metadata, outcome.network)
    loaded = load_version(path)
    kw = outcome.per_key[0]
    mean, std = kw.scale
    x = ((kw.windows[:500] - mean) / std).astype(np.float32)
    np.testing.assert_allclose(loaded.predictor(x), outcome.network.predict(x[..., None],
                               verbose=0).ravel(), rtol=1e-5, atol=1e-6)


def test_tampered_version_is_refused(outcome, tmp_path):
    path = save_version(tmp_path, outcome.metadata, outcome.network)
    with (path / "model.keras").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(ModelStoreError, match="checksum"):
        load_version(path)
