"""The level-free (`relative`) network: persistence before training, shift-equivariant after."""

import numpy as np
import pytest

from processor.network import NetworkSpec, Predictor, build_network, fit_network, load_network


def _windows(n: int, window: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(n, window)), axis=1).astype(np.float32)


@pytest.mark.parametrize("steps", [1, 3])
def test_untrained_relative_network_is_the_persistence_forecast(steps):
    spec = NetworkSpec(window=12, units=8, steps=steps, relative=True)
    x = _windows(20, 12)
    out = Predictor(build_network(spec), 12, steps=steps)(x)
    expected = x[:, -1] if steps == 1 else np.repeat(x[:, -1:], steps, axis=1)
    np.testing.assert_array_equal(out, expected)


def test_plain_network_is_not_persistence_untrained():
    """The check above could not pass by accident: a plain head starts elsewhere."""
    x = _windows(20, 12)
    out = Predictor(build_network(NetworkSpec(window=12, units=8)), 12)(x)
    assert np.abs(out - x[:, -1]).max() > 0.5


def test_trained_relative_network_moves_with_the_level(tmp_path):
    """Adding c to a window adds c to its prediction, however far c lies outside the
    training range; the plain network, trained the same way, does not follow."""
    window = 16
    t = np.arange(3000, dtype=np.float32)
    series = np.sin(2 * np.pi * t / 24).astype(np.float32)
    x = np.lib.stride_tricks.sliding_window_view(series[:-1], window).copy()
    y = series[window:].copy()
    predictors = {}
    for relative in (True, False):
        net = build_network(NetworkSpec(window=window, units=8, relative=relative))
        fit_network(net, (x[:2000], y[:2000]), (x[2000:], y[2000:]), epochs=3,
                    batch_size=64, patience=2, verbose=0)
        path = str(tmp_path / f"relative-{relative}.keras")
        net.save(path)
        predictors[relative] = Predictor(load_network(path), window)
    probe = x[2000:2100]
    for shift in (5.0, -40.0):
        moved = predictors[True](probe + shift) - predictors[True](probe)
        np.testing.assert_allclose(moved, shift, atol=1e-3)
        plain = predictors[False](probe + shift) - predictors[False](probe)
        assert np.abs(plain - shift).mean() > 1.0
