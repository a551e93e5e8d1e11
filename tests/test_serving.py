"""`mlflow models serve` of the champion on 127.0.0.1: real test images over REST."""

import json
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from pipeline.testing.project import Server, free_port, stage_env

pytestmark = pytest.mark.slow


def post(url: str, payload: object) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def served(smoke_project):
    """The README's serve command against the smoke project's store."""
    port = free_port()
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{smoke_project / 'mlflow.db'}")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/lenet5-mnist@champion",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--env-manager",
        "local",
        "--workers",
        "1",
    ]
    with Server(cmd, smoke_project, env, f"http://127.0.0.1:{port}/ping"):
        yield f"http://127.0.0.1:{port}/invocations"


@pytest.fixture(scope="module")
def test_images(smoke_project):
    import keras

    with np.load(smoke_project / "data/prepared/test.npz", allow_pickle=False) as z:
        x, y = z["x"][:64], z["y"][:64]
    model = keras.saving.load_model(smoke_project / "data/train/model.keras", safe_mode=True)
    return x, y, model.predict(x, verbose=0)


def test_scores_real_test_images(served, test_images):
    x, _, expected = test_images
    status, body = post(served, {"inputs": x[:8].tolist()})
    assert status == 200
    probs = np.asarray(body["predictions"])
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs, expected[:8], atol=1e-5)


def test_wrong_shape_is_a_client_error_and_the_server_keeps_serving(served, test_images):
    x, _, expected = test_images
    for bad in (
        {"inputs": [[1, 2, 3]]},
        {"inputs": x[:2, :20].tolist()},
        {"nonsense": 1},
        {"inputs": "not a tensor"},
    ):
        status, body = post(served, bad)
        assert 400 <= status < 500, (bad, status, body)
        assert body.get("error_code") or body.get("message")
    status, body = post(served, {"inputs": x[:1].tolist()})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], expected[:1], atol=1e-5)


def test_bounded_load_every_request_answered_and_right(served, test_images):
    """200 requests of 8 images from 4 threads, loopback only: all 200, none wrong."""
    from concurrent.futures import ThreadPoolExecutor

    x, _, expected = test_images
    want = expected.argmax(axis=1)

    def one(i: int) -> bool:
        idx = np.arange(i, i + 8) % len(x)
        status, body = post(served, {"inputs": x[idx].tolist()})
        return status == 200 and (np.asarray(body["predictions"]).argmax(1) == want[idx]).all()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(200)))
    assert sum(results) == 200
