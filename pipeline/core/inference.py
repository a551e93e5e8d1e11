"""A trained model's forward pass in NumPy: scoring without importing TensorFlow.

Importing TensorFlow and Keras takes 6-10 s of every process that does it (see
benchmarks/stage_overhead.py), which is most of the evaluate stage's fixed cost; the
forward pass of LeNet-5 on the test set is well under a second. So evaluate reads the
``.keras`` file that train saved (its config.json and model.weights.h5) and runs the
layers of :func:`pipeline.core.model.build_lenet5` here, in float32 as Keras does. A file
with any other layer or option raises :class:`UnsupportedModel` and the caller loads it
with Keras instead. tests/core/test_inference.py checks both against Keras on every model
variant the params allow.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

from pipeline.core.errors import DataError

Layer = Callable[[np.ndarray], np.ndarray]
# Images per forward pass. C1's patches are 100 KB an image: 128 images' (10 MB) stay in
# the CPU's caches between their copy and the matrix product; 1,024 images' (80 MB) went to
# memory and back, and C1 took 5x as long (10,000 test images: 0.62-0.80 s -> 0.39-0.44 s
# on 2 cores, AMD EPYC AVX-512; BENCHMARKS.md).
BATCH = 128


class UnsupportedModel(Exception):
    """The file holds a layer or an option this forward pass does not implement."""


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Layer] = {
    "linear": lambda z: z,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    "softmax": _softmax,
}


def _activation(cfg: dict) -> Layer:
    name = cfg.get("activation", "linear")
    if name not in ACTIVATIONS:
        raise UnsupportedModel(f"activation {name!r}")
    return ACTIVATIONS[name]


def _conv(kernel: np.ndarray, bias: np.ndarray, act: Layer) -> Layer:
    """'valid' stride-1 convolution: (N, H, W, C) -> (N, H-k+1, W-k+1, F), as one matrix
    product of the image patches with the kernel (kh, kw, C, F) as a (kh·kw·C, F) matrix."""
    kh, kw, c, f = kernel.shape
    flat = kernel.reshape(kh * kw * c, f)

    def conv(x: np.ndarray) -> np.ndarray:
        n, h, w, _ = x.shape
        if c == 1:  # C1: one input channel
            return act(_single_channel_patches(x[..., 0], kh, kw).T @ flat + bias).reshape(
                n, h - kh + 1, w - kw + 1, f
            )
        sn, sh, sw, sc = x.strides
        # (N, H', W', kh, kw·C): each patch row is kw·C contiguous floats (channels last),
        # so gathering the patches copies runs, not single floats
        patches = as_strided(
            x, (n, h - kh + 1, w - kw + 1, kh, kw * c), (sn, sh, sw, sh, sc), writeable=False
        )
        out = patches.reshape(-1, kh * kw * c) @ flat  # 2-D: BLAS's fast path
        return act(out.reshape(*patches.shape[:3], f) + bias)

    return conv


def _single_channel_patches(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """(N, H, W) -> (kh·kw, N·H'·W'): row i·kw+j holds every output pixel's (i, j) tap.

    With one channel a patch row is only kw floats, and gathering them one window at a
    time copied 5-float runs; here each of the kh·kw taps is one shifted slice of the
    whole batch, copied in rows of W' floats. Its transpose is the patch matrix BLAS
    multiplies as it is (C1 of 128 images: 7.1 -> 4.4 ms on one core, the same sums).
    """
    n, h, w = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    taps = np.empty((kh * kw, n, ho, wo), np.float32)
    for i in range(kh):
        for j in range(kw):
            taps[i * kw + j] = x[:, i : i + ho, j : j + wo]
    return taps.reshape(kh * kw, n * ho * wo)


def _pool(kind: str) -> Layer:
    """2×2 pooling, stride 2: (N, H, W, C) -> (N, H/2, W/2, C), from the four strided
    corners of each block (elementwise: much faster than a reduction over a reshape)."""

    def pool(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        a, b = x[:, 0:h:2, 0:w:2], x[:, 0:h:2, 1:w:2]
        c, d = x[:, 1:h:2, 0:w:2], x[:, 1:h:2, 1:w:2]
        if kind == "MaxPooling2D":
            return np.maximum(np.maximum(a, b), np.maximum(c, d))
        return (a + b + c + d) * np.float32(0.25)

    return pool


def _dtype_policy(cfg: dict) -> str:
    """A layer's Keras dtype policy: "float32", or e.g. "mixed_bfloat16" (train.precision)."""
    dtype = cfg.get("dtype") or "float32"
    return dtype["config"]["name"] if isinstance(dtype, dict) else str(dtype)


def _layer(kind: str, cfg: dict, weights: Callable[[], list[np.ndarray]]) -> Layer | None:
    """One layer as a function of a float32 batch, None for the input layer; ``weights``
    reads its arrays (once its config is known to be supported)."""
    if (policy := _dtype_policy(cfg)) != "float32":  # bf16 math: Keras scores it as served
        raise UnsupportedModel(f"{kind} computing in {policy}")
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedModel(f"{kind} with data_format={cfg['data_format']!r}")
    if kind != "ZeroPadding2D" and cfg.get("padding", "valid") != "valid":  # conv, pool
        raise UnsupportedModel(f"{kind} with padding={cfg['padding']!r}")
    if kind == "InputLayer":
        return None
    if kind == "Reshape":
        shape = tuple(cfg["target_shape"])
        return lambda x: x.reshape(len(x), *shape)
    if kind == "Rescaling":
        scale, offset = np.float32(cfg["scale"]), np.float32(cfg["offset"])
        return lambda x: x * scale + offset
    if kind == "ZeroPadding2D":
        (top, bottom), (left, right) = cfg["padding"]
        return lambda x: np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    if kind == "Conv2D":
        if tuple(cfg["strides"]) != (1, 1) or tuple(cfg["dilation_rate"]) != (1, 1):
            raise UnsupportedModel("Conv2D with strides or dilation")
        if cfg.get("groups", 1) != 1 or not cfg.get("use_bias", True):
            raise UnsupportedModel("Conv2D with groups or without bias")
        act = _activation(cfg)
        kernel, bias = weights()
        return _conv(kernel, bias, act)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        size, strides = tuple(cfg["pool_size"]), tuple(cfg["strides"] or cfg["pool_size"])
        if size != (2, 2) or strides != size:
            raise UnsupportedModel(f"{kind} {size} with strides {strides}")
        return _pool(kind)
    if kind == "Flatten":
        return lambda x: x.reshape(len(x), -1)
    if kind == "Dense":
        if not cfg.get("use_bias", True) or cfg.get("quantization_config"):
            raise UnsupportedModel("Dense without bias or quantized")
        act = _activation(cfg)
        kernel, bias = weights()
        return lambda x: act(x @ kernel + bias)
    raise UnsupportedModel(f"layer {kind}")


# Keras 3 stores a layer's weights under its class's snake-case name, numbered in order
WEIGHTED = {"Conv2D": "conv2d", "Dense": "dense"}


def _weights(h5, key: str) -> list[np.ndarray]:
    """A layer's arrays in order (kernel, bias) as float32."""
    if f"layers/{key}/vars" not in h5:
        raise UnsupportedModel(f"no weights under layers/{key}")
    group = h5[f"layers/{key}/vars"]
    return [group[str(i)][()].astype(np.float32) for i in range(len(group))]


class NumpyModel:
    """A ``.keras`` Sequential model's inference: ``predict(x)`` -> (N, 10) probabilities."""

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers

    @classmethod
    def load(cls, path: Path) -> NumpyModel:
        import h5py  # (a TensorFlow dependency, but a light one)

        if not path.exists():
            raise DataError(f"{path}: missing (run the train stage)")
        try:
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
                weights_file = io.BytesIO(z.read("model.weights.h5"))
        except (zipfile.BadZipFile, KeyError, ValueError) as e:
            raise DataError(f"{path}: not a Keras model file ({e})") from None
        if config.get("class_name") != "Sequential":
            raise UnsupportedModel(f"a {config.get('class_name')} model")
        seen: Counter[str] = Counter()
        layers = []
        with h5py.File(weights_file, "r") as h5:
            for spec in config["config"]["layers"]:
                kind, cfg = spec["class_name"], spec["config"]
                key = None
                if kind in WEIGHTED:
                    base = WEIGHTED[kind]
                    key = base if not seen[base] else f"{base}_{seen[base]}"
                    seen[base] += 1
                if (fn := _layer(kind, cfg, partial(_weights, h5, key))) is not None:
                    layers.append(fn)
        return cls(layers)

    def forward(self, x: np.ndarray, depth: int | None = None) -> np.ndarray:
        """The output of the first ``depth`` layers (all of them: the probabilities)."""
        h = x.astype(np.float32)
        for layer in self.layers[:depth]:
            h = layer(h)
        return h.astype(np.float32, copy=False)

    def embed(self, x: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """The penultimate layer's output (F6: (N, 84) for LeNet-5), batch by batch: what
        the output layer sees, the embedding that monitoring compares."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):  # (see predict)
            out = [self.forward(x[i : i + batch_size], -1) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def predict(self, x: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """Probabilities, batch by batch on every core (NumPy releases the GIL in its
        copies, ufuncs and matrix products).

        The BLAS runs one thread per batch meanwhile: left at its default (a thread per
        core) under a thread per core, the two oversubscribe the cores, and the 10,000 test
        images took 1.0-1.07 s instead of 0.70-0.77 s (2 cores, AMD EPYC AVX2). The
        probabilities moved by at most 6e-8 (float32 rounding; no label changed), and no
        longer depend on how many threads the BLAS would have picked. A caller that runs
        forward passes one after another (the service) calls :meth:`forward` under
        :func:`pin_blas_to_one_thread` instead: ``threadpool_limits`` scans every loaded
        library, 1.4 ms a call, and a pool costs as much again.
        """
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
        if not batches:
            return np.zeros((0, 10), np.float32)
        with threadpool_limits(limits=1, user_api="blas"):
            if len(batches) == 1:
                return self.forward(batches[0])
            with ThreadPoolExecutor(min(len(batches), os.cpu_count() or 1)) as pool:
                return np.concatenate(list(pool.map(self.forward, batches)))


def pin_blas_to_one_thread() -> None:
    """One BLAS thread for the rest of the process (every BLAS loaded by now): for a
    process that runs forward passes one after another, the service's batcher. At the
    BLAS's default, a thread per core, its second thread spins between calls, waiting for
    the next: the service's forward passes of a few images, 140 a second, kept it busy,
    and the process used 1.3 cores where it needed 0.35 (2 cores, AMD EPYC AVX2). One
    thread is also faster on LeNet-5's matrices: 128 images 11.8 ms against 13.9 ms
    (BENCHMARKS.md)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # (not restored: for good)
