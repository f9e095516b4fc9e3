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


# -- the seasonal channel -----------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 3])
def test_a_seasonal_network_reads_its_window_and_the_stretch_a_season_before(steps):
    """Input width w + P - l: the first w values (a season before) and the last w; the
    values between them are carried for later rows but not read now."""
    window, season = 6, 20
    spec = NetworkSpec(window=window, units=8, steps=steps, season=season)
    width = spec.input_width
    assert width == window + season - steps
    predict = Predictor(build_network(spec), width, steps=steps)
    x = _windows(16, width, seed=3)
    base = predict(x)
    middle = x.copy()
    middle[:, window:width - window] += 100.0
    np.testing.assert_array_equal(predict(middle), base)
    for read in (0, window - 1, width - window, width - 1):
        moved = x.copy()
        moved[:, read] += 1.0
        assert np.abs(predict(moved) - base).max() > 1e-4, read


def test_season_must_cover_the_predicted_steps():
    from processor.windows import input_width

    assert input_width(30, 0, 1) == 30 and input_width(30, 288, 1) == 317
    with pytest.raises(ValueError, match="longer than"):
        input_width(30, 3, 3)  # both channels would be the same values


@pytest.mark.slow
def test_the_season_lets_the_network_foresee_a_daily_step():
    """A level that switches at the same hour each day: a window shorter than the level's
    runs cannot tell when it switches; the same network reading the day before can."""
    from processor.windows import input_width

    window, day = 8, 48
    rng = np.random.default_rng(4)
    t = np.arange(day * 60)
    series = (np.where(t % day < day // 2, 0.0, 1.0) + rng.normal(0, 0.05, len(t)))
    series = series.astype(np.float32)
    steps_at = np.flatnonzero(np.diff(t % day < day // 2)) + 1  # the switching rows
    errors = {}
    for season in (0, day):
        width = input_width(window, season)
        x = np.lib.stride_tricks.sliding_window_view(series[:-1], width).copy()
        y = series[width:].copy()
        target = np.arange(width, len(series))
        train = target < day * 40
        net = build_network(NetworkSpec(window=window, units=16, season=season))
        fit_network(net, (x[train], y[train]), (x[~train], y[~train]), epochs=30,
                    batch_size=64, patience=5, verbose=0)
        pred = Predictor(net, width)(x[~train])
        at_switch = np.isin(target[~train], steps_at)
        errors[season] = float(np.abs(pred - y[~train])[at_switch].mean())
    assert errors[0] > 0.3  # misses the switch by a good part of the step
    assert errors[day] < errors[0] / 3
