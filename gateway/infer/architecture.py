"""The network of Ribeiro et al. 2020, built in code.

Mirrors the companion code (antonior92/automatic-ecg-diagnosis, model.py)
layer for layer, so that weights saved by the authors can be loaded into it by
layer when a newer Keras rejects the stored config.  Works with any module
exposing the Keras API (``keras`` 3 or ``tf_keras``).
"""

from __future__ import annotations

from typing import Any

INPUT_SHAPE: tuple[int, int] = (4096, 12)
N_OUTPUTS = 6
KERNEL_SIZE = 16
#: (output length, filters) of the four residual units.
RESIDUAL_UNITS: tuple[tuple[int, int], ...] = ((1024, 128), (256, 196), (64, 256), (16, 320))
#: Dropout of the companion code's ResidualUnit default; inactive at inference.
DROPOUT_RATE = 0.8


def _bn_relu(layers: Any, x: Any) -> Any:
    return layers.Activation("relu")(layers.BatchNormalization()(x))


def _residual_unit(layers: Any, x: Any, y: Any, n_samples_out: int, n_filters_out: int) -> tuple[Any, Any]:
    downsample = int(y.shape[1]) // n_samples_out
    if downsample > 1:
        y = layers.MaxPooling1D(downsample, strides=downsample, padding="same")(y)
    if int(y.shape[2]) != n_filters_out:
        y = layers.Conv1D(n_filters_out, 1, padding="same", use_bias=False)(y)
    x = layers.Conv1D(n_filters_out, KERNEL_SIZE, padding="same", use_bias=False)(x)
    x = layers.Dropout(DROPOUT_RATE)(_bn_relu(layers, x))
    x = layers.Conv1D(n_filters_out, KERNEL_SIZE, strides=downsample, padding="same", use_bias=False)(x)
    x = layers.Add()([x, y])
    y = x
    x = layers.Dropout(DROPOUT_RATE)(_bn_relu(layers, x))
    return x, y


def build_model(keras: Any) -> Any:
    """The untrained network: input ``signal`` (None, 4096, 12), output (None, 6) sigmoids."""
    layers = keras.layers
    signal = layers.Input(shape=INPUT_SHAPE, dtype="float32", name="signal")
    x = layers.Conv1D(64, KERNEL_SIZE, padding="same", use_bias=False)(signal)
    x = _bn_relu(layers, x)
    y = x
    for n_samples_out, n_filters_out in RESIDUAL_UNITS:
        x, y = _residual_unit(layers, x, y, n_samples_out, n_filters_out)
    x = layers.Flatten()(x)
    diagn = layers.Dense(N_OUTPUTS, activation="sigmoid")(x)
    return keras.Model(signal, diagn)
