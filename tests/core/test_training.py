"""pipeline.core.training: the learning-rate schedule and optimizer come from params."""

import numpy as np
import pytest

from pipeline.core import hardware, training
from pipeline.core.errors import ParamsError
from pipeline.core.training import learning_rate, make_optimizer
from pipeline.testing.project import reference_params


def train_params(**changes: object):
    """The reference recipe's train section with these keys changed."""
    return reference_params({f"train.{k}": v for k, v in changes.items()}).train


def test_schedules_and_optimizers_come_from_params():
    cosine = learning_rate(train_params(lr_schedule="cosine", epochs=10, learning_rate=0.1), 100)
    assert float(cosine(0)) == pytest.approx(0.1)
    assert float(cosine(1000)) == pytest.approx(0.0, abs=1e-6)
    warm = learning_rate(
        train_params(lr_schedule="cosine", warmup_epochs=1, epochs=10, learning_rate=0.1), 100
    )
    assert float(warm(50)) == pytest.approx(0.05, rel=1e-3)
    step = learning_rate(
        train_params(lr_schedule="step", lr_decay_epochs=2, lr_decay_rate=0.5, learning_rate=0.1),
        100,
    )
    assert [round(float(step(s)), 6) for s in (0, 199, 200, 400)] == [0.1, 0.1, 0.05, 0.025]
    reference = train_params()
    assert reference.lr_schedule == "constant" and reference.learning_rate == 0.01
    assert learning_rate(reference, 100) == 0.01
    sgd = make_optimizer(train_params(momentum=0.9, nesterov=True), 10)
    assert type(sgd).__name__ == "SGD" and sgd.nesterov and sgd.momentum == 0.9
    assert (
        type(make_optimizer(train_params(optimizer="adamw", weight_decay=1e-4), 10)).__name__
        == "AdamW"
    )


def test_mixed_bfloat16_is_refused_without_bf16_hardware(monkeypatch):
    """On a CPU without bf16 instructions (and no GPU), one line before any training."""
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind: [])
    params = reference_params({"train.precision": "mixed_bfloat16"})
    with pytest.raises(ParamsError) as e:
        training.prepare(params)
    assert str(e.value) == (
        "train.precision: mixed_bfloat16 needs bf16 hardware, and this CPU has no "
        "AVX512_BF16 or AMX-BF16 and there is no GPU: use float32"
    )
    training.check_precision("float32")  # float32 runs anywhere


def test_mix_repeats_feedback_and_turns_every_copy_but_the_first_when_asked():
    rng = np.random.default_rng(0)
    mnist = (rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.arange(5))
    feedback = (np.zeros((4, 28, 28), np.uint8), np.array([7, 1, 7, 3]))
    feedback[0][:, 4:24, 13:15] = 255  # vertical bars: a turn moves pixels off them

    assert training.mix(mnist, feedback, 0, rotate=15) is mnist  # the run before feedback
    x, y = training.mix(mnist, feedback, 3)
    assert x.shape == (5 + 12, 28, 28) and y.tolist() == list(range(5)) + [7, 1, 7, 3] * 3
    assert np.array_equal(x[5:], np.tile(feedback[0], (3, 1, 1)))  # exact copies

    turned, labels = training.mix(mnist, feedback, 3, rotate=15, seed=1)
    assert np.array_equal(labels, y) and np.array_equal(turned[:9], x[:9])  # MNIST, copy 1
    moved = [not np.array_equal(a, b) for a, b in zip(turned[9:], x[9:], strict=True)]
    assert sum(moved) >= 6  # (an angle of 0 is one of the 31 a copy may draw)
    again, _ = training.mix(mnist, feedback, 3, rotate=15, seed=1)
    assert np.array_equal(again, turned)  # seeded: the same run gives the same images
