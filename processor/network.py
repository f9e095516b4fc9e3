"""The LSTM that predicts the next value(s) of a (scaled) series from the window before it.

TensorFlow is imported here and nowhere in the pure modules, so the stream's decoding,
windowing and scoring stay importable (and testable) without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from processor.windows import input_width

FloatArray = npt.NDArray[np.float32]
#: Smallest batch given to the network (see `Predictor.__call__`).
MIN_ROWS = 8


@dataclass(frozen=True)
class NetworkSpec:
    window: int = 50
    units: int = 64
    layers: int = 1
    dropout: float = 0.0
    steps: int = 1
    relative: bool = False
    season: int = 0

    @property
    def input_width(self) -> int:
        return input_width(self.window, self.season, self.steps)


def build_network(spec: NetworkSpec) -> keras.Model:
    """Stacked LSTM -> Dense(steps): regression of the next `steps` scaled values.

    With a `season` the LSTM reads two channels at each of its `window` steps: the
    recent values, and the values one season earlier aligned with them (`input_width`
    says how that is one contiguous input). What happened at this time yesterday is
    what tells a daily pattern's normal rise from an incident, and a window long enough
    to show it directly would make the LSTM run hundreds of steps instead of `window`.

    With `relative` the network is level-free: it sees the window minus the window's
    last value and predicts the change from that value, which is then added back; the
    head starts at zero, so before any training it is the persistence forecast. A plain
    network trained on a few hundred rows cannot extrapolate: once the series moves to a
    level outside its training range its saturated units keep predicting the old range,
    and a settled shift is reported as an error for as long as it lasts.
    """
    width = spec.input_width
    inputs = keras.Input(shape=(width, 1), name="window")
    h = inputs
    if spec.relative:
        last = keras.layers.Cropping1D((width - 1, 0), name="last")(inputs)
        h = keras.layers.Subtract(name="relative")(
            [inputs, keras.layers.UpSampling1D(width, name="last_repeated")(last)])
    if spec.season:
        recent = keras.layers.Cropping1D((width - spec.window, 0), name="recent")(h)
        seasonal = keras.layers.Cropping1D((0, width - spec.window), name="season_ago")(h)
        h = keras.layers.Concatenate(axis=-1, name="with_season")([recent, seasonal])
    for i in range(spec.layers):
        h = keras.layers.LSTM(spec.units, return_sequences=i < spec.layers - 1,
                              name=f"lstm_{i}")(h)
        if spec.dropout > 0:
            h = keras.layers.Dropout(spec.dropout)(h)
    if not spec.relative:
        outputs = keras.layers.Dense(spec.steps, name="next_value")(h)
    else:
        change = keras.layers.Dense(spec.steps, kernel_initializer="zeros",
                                    name="change")(h)
        base = keras.layers.Flatten(name="last_value")(last)
        if spec.steps > 1:
            base = keras.layers.Concatenate(name="last_values")([base] * spec.steps)
        outputs = keras.layers.Add(name="next_value")([base, change])
    model = keras.Model(inputs, outputs, name="lstm_predictor")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


@dataclass(frozen=True)
class FitResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    train_loss: float


class RowSource(Protocol):
    """Training pairs gathered a batch at a time (`processor.train.TrainingRows`)."""

    def __len__(self) -> int: ...

    def batch(self, rows: npt.NDArray[np.int64]) -> tuple[FloatArray, FloatArray]: ...


class _Arrays:
    """Pairs already in memory, as a `RowSource`."""

    def __init__(self, x: FloatArray, y: FloatArray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, rows: npt.NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
        return self.x[rows], self.y[rows]


class _Batches(keras.utils.PyDataset):  # type: ignore[misc]
    """Keras batches from a `RowSource`, in a new random order each epoch when shuffled
    (from `seed`, so a training run repeats)."""

    def __init__(self, source: RowSource, batch_size: int, seed: int | None) -> None:
        super().__init__()
        self.source, self.batch_size = source, batch_size
        self._rng = None if seed is None else np.random.default_rng(seed)
        self._order = np.arange(len(source))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.source) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        rows = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        x, y = self.source.batch(rows)
        return x[..., None], y

    def on_epoch_end(self) -> None:
        if self._rng is not None:
            self._order = self._rng.permutation(len(self.source))


def fit_network(
    model: keras.Model,
    train: RowSource | tuple[FloatArray, FloatArray],
    val: RowSource | tuple[FloatArray, FloatArray],
    *,
    epochs: int,
    batch_size: int,
    patience: int,
    verbose: int = 2,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    seed: int = 0,
) -> FitResult:
    """Train with early stopping on validation loss, keeping the best weights.

    Pairs come as arrays or as a `RowSource` gathered a batch at a time; targets are
    (n,) for one step, (n, steps) for several.
    """
    if isinstance(train, tuple):
        train = _Arrays(*train)
    if isinstance(val, tuple):
        val = _Arrays(*val)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        )
    ]
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(epoch, dict(logs or {}))
            )
        )
    history = model.fit(
        _Batches(train, batch_size, seed),
        validation_data=_Batches(val, batch_size, None),
        epochs=epochs,
        callbacks=callbacks,
        verbose=verbose,
    )
    val_losses = [float(v) for v in history.history["val_loss"]]
    best = int(np.argmin(val_losses))
    return FitResult(
        epochs_run=len(val_losses),
        best_epoch=best + 1,
        best_val_loss=val_losses[best],
        train_loss=float(history.history["loss"][best]),
    )


class Predictor:
    """Batched inference as one traced graph call instead of `model.predict`.

    `model.predict` sets up a data pipeline per call, which costs milliseconds even for one
    window. A `tf.function` with a fixed input signature traces once for every batch size.
    """

    def __init__(self, model: keras.Model, window: int, max_batch: int = 8192,
                 steps: int = 1) -> None:
        self.model = model
        self.window = window
        self.max_batch = max_batch
        self.steps = steps
        shape = [-1] if steps == 1 else [-1, steps]

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None, window], tf.float32)]
        )
        def _forward(x: tf.Tensor) -> tf.Tensor:
            return tf.reshape(model(tf.expand_dims(x, -1), training=False), shape)

        self._forward = _forward

    def __call__(self, windows: FloatArray) -> FloatArray:
        """Predict the next scaled value(s) of each row of `windows` (n, window).

        Shape (n,) for a one-step network, (n, steps) otherwise.
        """
        x = np.asarray(windows, np.float32)
        if x.ndim != 2 or x.shape[1] != self.window:
            raise ValueError(f"expected windows of shape (n, {self.window}), got {x.shape}")
        n = len(x)
        if n == 0:
            return np.empty(0 if self.steps == 1 else (0, self.steps), np.float32)
        if n < MIN_ROWS:
            # A single row takes another kernel path whose rounding differs in the last
            # bit; padding keeps every record's prediction independent of its batch.
            x = np.concatenate([x, np.zeros((MIN_ROWS - n, self.window), np.float32)])
        parts = [
            self._forward(tf.constant(x[i : i + self.max_batch])).numpy()
            for i in range(0, len(x), self.max_batch)
        ]
        return np.concatenate(parts)[:n].astype(np.float32)


def set_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def load_network(path: str) -> keras.Model:
    return keras.models.load_model(path, compile=False)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container's CPU limit), which `os.cpu_count` does not see."""
    n = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def set_inference_threads(threads: int) -> int:
    """Size TensorFlow's intra-op thread pool; call before the first model is loaded.

    0 means every usable core but one. A stream processor does more than inference: the
    Kafka client's threads, decoding and encoding need a core while a forward pass runs,
    and a pool on every core spins against them (on 2 cores, one inference thread gave
    more records per second end to end than two, and far lower latency).
    """
    n = threads or max(1, usable_cores() - 1)
    tf.config.threading.set_intra_op_parallelism_threads(n)
    # The network is one chain of ops: an inter-op pool has nothing to run in parallel,
    # and its idle threads spin (a quarter of a core, taken from the Kafka side).
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return n
