"""The fast path gives the plain path's scores.

Fast: the stream processor's way, many keys interleaved in batches, `Engine.prepare` of
the next batch before the current one's forward pass (`Engine.forward`, one traced call
per batch) and its scores (`Engine.score`, apart from the pass), as the pipelined
processor runs them. Plain: one `model.predict` per record on
a window cut by hand, and scipy's normal log density.
"""

import numpy as np
import pytest
from scipy.stats import norm

from processor.dataset import read_csv
from processor.detect import loaded_from_outcome
from processor.engine import SCORED, Engine, Observation
from processor.model_store import save_version
from processor.train import TrainConfig, train
from tests.nab_data import MACHINE_TEMP

pytestmark = pytest.mark.slow

WINDOW = 20


@pytest.fixture(scope="module")
def outcome():
    series = read_csv(MACHINE_TEMP).slice(0, 3000)
    cfg = TrainConfig(window=WINDOW, units=16, epochs=2, batch_size=128, verbose=0)
    return train([series], cfg, "test")


def test_pipelined_batches_score_like_model_predict_per_record(outcome, tmp_path):
    model = loaded_from_outcome(outcome, save_version(tmp_path, outcome.metadata,
                                                      outcome.network))
    trained_key = outcome.per_key[0].key
    raw = read_csv(MACHINE_TEMP).values
    # The default model reads a day back (5-minute data: 288 rows) besides its window.
    width = model.input_width
    assert model.metadata.season == 288 and width == WINDOW + 288 - 1
    n = width + 40
    # The trained key and two it never saw (scored with the default profile).
    streams = {trained_key: raw[3000:3000 + n], "other-a": raw[5000:5000 + n] + 3.0,
               "other-b": raw[9000:9000 + n] * 0.9}
    rows = [Observation(key, 1_000_000 + t * 60_000, float(v), 0, t * 3 + j)
            for t in range(n) for j, (key, vals) in enumerate(streams.items())
            for v in [vals[t]]]

    engine = Engine(model)
    batches = [rows[i:i + 37] for i in range(0, len(rows), 37)]
    fast: dict[tuple[str, int], float] = {}
    pending = engine.prepare(batches[0])
    for nxt in [*batches[1:], None]:
        after = engine.prepare(nxt) if nxt is not None else None  # before finishing
        cols = engine.score(pending, Engine.forward(pending)).columns
        for i in np.flatnonzero(cols.status == SCORED):
            fast[(cols.keys[i], int(cols.timestamp_ms[i]))] = float(cols.log_pd[i])
        pending = after  # type: ignore[assignment]

    plain: dict[tuple[str, int], float] = {}
    # Plain: the network on the values it reads, by hand (its own layers take the window
    # and the stretch one season back apart).
    for key, vals in streams.items():
        profile = model.metadata.profiles.get(key, model.metadata.default_profile)
        for t in range(width, len(vals), 7):  # every 7th: model.predict is slow
            window = (vals[t - width:t] - profile.scale_mean) / profile.scale_std
            pred = float(outcome.network.predict(
                window.astype(np.float32)[None, :, None], verbose=0)[0, 0])
            error = (vals[t] - profile.scale_mean) / profile.scale_std - pred
            plain[(key, 1_000_000 + t * 60_000)] = float(norm.logpdf(
                error, profile.error_mean, np.sqrt(profile.error_var)))

    assert len(fast) == 3 * (n - width)
    assert len(plain) > 15
    got = np.array([fast[k] for k in plain])
    want = np.array(list(plain.values()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # Keys the model never saw are scored too, with the default profile.
    assert any(k[0] == "other-a" for k in plain)
