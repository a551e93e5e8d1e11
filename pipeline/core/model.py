"""LeNet-5 (LeCun et al. 1998) as one readable Keras ``Sequential``.

The model takes raw MNIST pixels (N×28×28, values 0–255) and does its own scaling and
zero-padding, so the served model needs no preprocessing that could skew from training.
"""

from __future__ import annotations

from pipeline.core.backend import keras
from pipeline.core.params import ModelParams

layers = keras.layers


def build_lenet5(cfg: ModelParams, precision: str = "float32") -> keras.Sequential:
    """LeNet-5; trainable parameters per layer with padding=2: 156/2416/48120/10164/850.

    ``precision`` is every layer's Keras dtype policy (``train.precision``) but the
    output's: with ``mixed_bfloat16`` the layers compute in bfloat16 on float32 weights,
    and the softmax stays float32 so that the loss and the probabilities keep their digits.
    """
    pool = {"max": layers.MaxPooling2D, "average": layers.AveragePooling2D}[cfg.pooling]
    side = 28 + 2 * cfg.padding  # 32 with the paper's padding
    act, dt = cfg.activation, precision
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28), name="pixels"),  # raw 0–255
            layers.Reshape((28, 28, 1), name="channel", dtype=dt),
            layers.Rescaling(1 / 255, name="scale", dtype=dt),  # -> [0, 1]
            layers.ZeroPadding2D(cfg.padding, name="pad", dtype=dt),  # -> side×side×1
            layers.Conv2D(6, 5, activation=act, name="C1", dtype=dt),  # -> (side-4)²×6
            pool(2, 2, name="S2", dtype=dt),  # -> ((side-4)/2)²×6
            layers.Conv2D(16, 5, activation=act, name="C3", dtype=dt),  # -> ((side-4)/2-4)²×16
            pool(2, 2, name="S4", dtype=dt),  # -> 5×5×16 (4×4×16 without padding)
            layers.Flatten(name="flatten", dtype=dt),  # -> 400 (256 without padding)
            layers.Dense(120, activation=act, name="C5", dtype=dt),
            layers.Dense(84, activation=act, name="F6", dtype=dt),
            layers.Dense(10, activation="softmax", name="output", dtype="float32"),
        ],
        name=f"lenet5_{side}x{side}",
    )


def train_flops_per_image(model: keras.Model) -> dict[str, int]:
    """FP32 FLOPs of one training step per image, per layer with weights: {"C1": ..., ...}.

    A multiply-add is 2 FLOPs. Per layer, with M its multiply-adds per image (Conv2D:
    out_h·out_w·out_c·k_h·k_w·in_c, Dense: in·out): forward 2M, weight gradient 2M, input
    gradient 2M except for the first layer, whose input (the data) needs no gradient. So a
    step is 6M per layer minus 2M for the first. Biases, activations, pooling, softmax and
    the optimizer update are O(activations) or O(weights), not counted (< 2 %).
    """
    flops, first = {}, True
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw, c_in, _ = layer.kernel.shape
            _, h, w, c_out = layer.output.shape
            macs = h * w * c_out * kh * kw * c_in
        elif isinstance(layer, layers.Dense):
            macs = layer.kernel.shape[0] * layer.kernel.shape[1]
        else:
            continue
        flops[layer.name] = (4 if first else 6) * int(macs)
        first = False
    return flops
