"""A window judged against a reference: drift by column, the share, the estimates."""

import numpy as np

from pipeline.core import monitoring as mo
from pipeline.core.params import load_params
from pipeline.monitor.assess import assess


def test_windows_and_assess():
    assert mo.windows(1200, 500) == [slice(0, 500), slice(500, 1000)]  # 200 < half: dropped
    assert mo.windows(1300, 500)[-1] == slice(1000, 1300)
    assert mo.windows(300, None) == [slice(0, 300)]
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (600, 28, 28)).astype(np.uint8)
    probs = rng.dirichlet(np.ones(10) * 0.3, 600)
    ref = mo.reference(x, rng.integers(0, 10, 600), probs, rng.normal(0, 1, (600, 84)))
    cur = mo.profile(x[:300], probs[:300], ref["embedding"][:300])
    labels = np.full(300, -1)
    labels[:50] = cur["digit"][:50]  # 50 labelled, all right
    out = assess(ref, cur, load_params().monitor, labels)
    assert out["drift"]["detected"] is False
    assert out["accuracy"]["labeled"] == 1.0 and out["accuracy"]["labeled_images"] == 50
    assert set(out["drift"]["features"]) == {*mo.FEATURES, "confidence", "predicted_digit",
                                             "embedding_f6"}  # fmt: skip
    assert out["accuracy"]["trusted"] is True
    far = mo.profile(x[:300], probs[:300], ref["embedding"][:300] + 10.0)  # another domain
    far_out = assess(ref, far, load_params().monitor, intervals=False)["accuracy"]
    assert far_out["trusted"] is False and "monitor.untrusted_auc" in far_out["untrusted"]
