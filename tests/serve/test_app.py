"""pipeline.serve as a real process on a smoke project: the three ways in answer what
MLflow's pyfunc answers, bad input is a 4xx and the service stays up, metrics, feedback,
the webhook's signature."""

from __future__ import annotations

import datetime
import io
import json
import re
import sqlite3
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from pipeline.core import imaging
from pipeline.testing.project import (
    clone_of,
    feedback_key,
    run,
    scoring_service,
    send_label,
    set_params,
    stage_env,
)

pytestmark = pytest.mark.slow

NAME = "lenet5-mnist"
SECRET = "test-webhook-secret"


@pytest.fixture(scope="module")
def served(smoke_project, tmp_path_factory):
    project = clone_of(smoke_project, tmp_path_factory.mktemp("served"))
    server = scoring_service(project, stage_env(SERVE_WEBHOOK_SECRET=SECRET))
    with server as proc:
        yield project, server.url, proc


def post(url: str, body: bytes, content_type: str = "application/json", headers=None):
    """(status, headers, parsed JSON body) of a POST; 4xx/5xx answers included."""
    req = urllib.request.Request(url, body, {"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    boundary = "----pipeline-test-boundary"
    out = io.BytesIO()
    for name, data in files:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                  f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n".encode())  # fmt: skip
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def pyfunc_probs(project, version: str, x: np.ndarray) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        return np.asarray(mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(x))
    finally:
        mlflow.set_tracking_uri(None)


def test_three_endpoints_answer_as_mlflow_pyfunc_does(served):
    project, url, _ = served
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        x = z["x"][:32]
    status, headers, out = post(f"{url}/invocations", json.dumps({"inputs": x.tolist()}).encode())
    assert status == 200
    version = headers["X-Model-Version"]
    expected = pyfunc_probs(project, version, x)
    np.testing.assert_allclose(np.asarray(out["predictions"]), expected, atol=1e-5)

    for datatype, data in (("UINT8", x.reshape(-1).tolist()), ("FP32", x.astype(float).tolist())):
        body = {"id": "r1", "inputs": [{"name": "any", "shape": [32, 28, 28],
                                        "datatype": datatype, "data": data}]}  # fmt: skip
        status, headers, v2 = post(f"{url}/v2/models/{NAME}/infer", json.dumps(body).encode())
        assert status == 200 and v2["model_version"] == version and v2["id"] == "r1"
        [output] = v2["outputs"]
        assert output["shape"] == [32, 10] and output["datatype"] == "FP32"
        probs = np.asarray(output["data"]).reshape(32, 10)
        np.testing.assert_allclose(probs, expected, atol=1e-5)

    files = [(f"d{i}.png", png(x[i])) for i in range(4)]
    body, content_type = multipart(files)
    status, headers, out = post(f"{url}/predict", body, content_type)
    assert status == 200 and headers["X-Model-Version"] == version
    normalised = np.stack([imaging.to_mnist(imaging.image_from_bytes(d, n)) for n, d in files])
    want = pyfunc_probs(project, version, normalised)
    got = out["predictions"]
    assert [p["digit"] for p in got] == want.argmax(axis=1).tolist()
    assert [p["probability"] for p in got] == pytest.approx(want.max(axis=1).tolist(), abs=1e-5)
    assert {p["version"] for p in got} == {version} and out["request_id"] == headers["X-Request-Id"]


BAD = [
    ("invocations", b'{"inputs": [[1, 2, 3]]}', 400, "shape"),
    ("invocations", b'{"inputs": "seven"}', 400, "numbers"),
    ("invocations", b'{"inputs": [[["a"] * 28] * 28]}'.replace(b"*", b""), 400, ""),
    ("invocations", json.dumps({"inputs": [[[float("nan")] * 28] * 28]}).encode(), 400, ""),
    ("invocations", json.dumps({"inputs": [[[300] * 28] * 28]}).encode(), 400, "0-255"),
    ("invocations", json.dumps({"inputs": [[[-1] * 28] * 28]}).encode(), 400, "0-255"),
    ("invocations", b'{"inputs": []}', 400, "empty"),
    ("invocations", b"{not json", 400, "JSON"),
    ("invocations", b'{"dataframe_split": {}}', 400, "inputs"),
    ("v2/models/not-this-model/infer", b"{}", 404, "unknown model"),
    (
        "v2/models/lenet5-mnist/infer",
        b'{"inputs": [{"shape": [1, 28, 28], "datatype": "BYTES", "data": []}]}',
        400,
        "datatype",
    ),  # fmt: skip
    (
        "v2/models/lenet5-mnist/infer",
        b'{"inputs": [{"shape": [2, 28, 28], "datatype": "FP32", "data": [1, 2]}]}',
        400,
        "values",
    ),  # fmt: skip
]


@pytest.mark.parametrize("endpoint,body,status,words", BAD, ids=lambda v: str(v)[:20])
def test_bad_input_is_a_4xx_json_line_and_the_service_stays_up(served, endpoint, body, status,
                                                               words):  # fmt: skip
    _, url, proc = served
    got, _, out = post(f"{url}/{endpoint}", body)
    assert got == status
    message = out.get("message") or out.get("error")
    assert message and "\n" not in message and words.lower() in message.lower()
    assert proc.poll() is None
    ok, _, _ = post(f"{url}/invocations", json.dumps({"inputs": [[[0] * 28] * 28]}).encode())
    assert ok == 200


def test_not_an_image_and_a_body_over_the_limit_are_refused(served):
    _, url, proc = served
    body, content_type = multipart([("notes.png", b"this is not a picture")])
    status, _, out = post(f"{url}/predict", body, content_type)
    assert status == 400 and "not an image" in out["message"]
    huge = b'{"inputs": [' + b"0," * (9 * 2**20) + b"0]}"  # 18 MB > serve.max_body_mb 16
    status, _, out = post(f"{url}/invocations", huge)
    assert status == 413 and "16 MB" in out["message"]
    assert proc.poll() is None


def test_feedback_is_stored_and_metrics_are_exposed(served):
    project, url, _ = served
    status, headers, _ = post(
        f"{url}/invocations", json.dumps({"inputs": [[[0] * 28] * 28]}).encode()
    )
    rid = headers["X-Request-Id"]
    key = feedback_key(project, "metrics-test")
    status, out = send_label(url, key, rid, 3)
    assert status == 200 and out == {"request_id": rid, "index": 0, "digit": 3,
                                     "sender": "metrics-test"}  # fmt: skip
    with sqlite3.connect(project / "predictions.db") as db:
        assert db.execute("SELECT digit FROM feedback WHERE request_id = ?", (rid,)).fetchall() == [
            (3,)
        ]
    with urllib.request.urlopen(f"{url}/metrics") as resp:
        text = resp.read().decode()
    for line in (
        'serve_requests_total{endpoint="invocations",status="200"}',
        'serve_request_duration_seconds_bucket{endpoint="invocations",le="0.001"}',
        "serve_batch_size_images_bucket",
        "serve_predictions_total{digit=",
        "serve_model_version 1.0",
    ):
        assert line in text, line


def test_feedback_needs_a_key_an_answered_image_and_a_digit(served):
    """Only a key's holder labels, only images this service answered, each label with its
    sender; a sender's second label replaces its first, another sender's is kept."""
    project, url, proc = served
    two = np.zeros((2, 28, 28), np.uint8).tolist()
    _, headers, _ = post(f"{url}/invocations", json.dumps({"inputs": two}).encode())
    rid = headers["X-Request-Id"]
    alice, bob = feedback_key(project, "alice"), feedback_key(project, "bob")
    assert alice.startswith("lnk_") and alice != bob

    codes = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             404: "RESOURCE_DOES_NOT_EXIST"}  # MLflow's REST error codes  # fmt: skip

    def refused(key, request_id, digit, index, status, words):
        got, out = send_label(url, key, request_id, digit, index)
        assert got == status, out
        assert words in out["message"].lower() and "\n" not in out["message"]
        assert out["error_code"] == codes[status], out

    refused(None, rid, 3, 0, 401, "key is needed")
    refused("lnk_not-a-key", rid, 3, 0, 401, "unknown key")
    refused(alice, "0" * 32, 3, 0, 404, "prediction log")  # an id the service never issued
    refused(alice, rid, 3, 2, 404, "no image 2")  # the request had 2 images
    refused(alice, rid, 12, 0, 400, "digit")
    assert send_label(url, alice, rid, 3, 1)[0] == 200
    assert send_label(url, alice, rid, 5, 1)[0] == 200  # replaces alice's 3
    assert send_label(url, bob, rid, 8, 1)[0] == 200  # disagrees: both kept
    with sqlite3.connect(project / "predictions.db") as db:
        rows = db.execute("SELECT sender, digit FROM feedback WHERE request_id = ? AND "
                          "position = 1 ORDER BY sender", (rid,)).fetchall()  # fmt: skip
    assert rows == [("alice", 5), ("bob", 8)]
    run([sys.executable, "-m", "pipeline.serve", "keys", "revoke", "alice"], project)
    refused(alice, rid, 3, 0, 403, "revoked")
    listed = run([sys.executable, "-m", "pipeline.serve", "keys", "list"], project).stdout
    assert re.search(r"alice .* revoked .* 1 labels", listed), listed
    assert re.search(r"bob .* active .* 1 labels", listed), listed
    assert "lnk_" not in listed and alice not in (project / "predictions.db").read_bytes().decode(
        "latin-1")  # only the hash is stored  # fmt: skip
    assert proc.poll() is None
    # The feedback stage takes bob's label alone now: alice's key was revoked.
    set_params(project, feedback__until=datetime.datetime.now(datetime.UTC).isoformat())
    run([sys.executable, "-m", "pipeline.feedback"], project)
    taken = {}
    for split in ("train", "holdout"):
        with np.load(project / f"data/feedback/{split}.npz", allow_pickle=False) as z:
            taken.update(zip(z["ids"].tolist(), z["y"].tolist(), strict=True))
    assert taken[f"{rid}:1"] == 8 and f"{rid}:0" not in taken


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples in /metrics (0 when it has none yet)."""
    with urllib.request.urlopen(f"{url}/metrics") as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def test_past_capacity_requests_get_503_at_once_and_the_service_recovers(served):
    """The shipped bounds (serve.max_queue 4096, serve.max_queue_ms 500): 48 clients of 128
    images each want far more than 2 cores compute; the excess gets 503 + Retry-After,
    counted by reason, every 200 is logged, and the next request after the load is
    answered."""
    from pipeline.serve.log import count_rows
    from pipeline.testing.load import drive

    project, url, proc = served
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        x = z["x"][:512]
    bodies = [json.dumps({"inputs": x[i : i + 128].tolist()}).encode() for i in (0, 128, 256)]
    db = f"sqlite:///{project / 'predictions.db'}"
    deadline = time.monotonic() + 60  # rows of earlier tests written first
    while metric(url, "serve_prediction_log_backlog_rows") and time.monotonic() < deadline:
        time.sleep(0.1)
    rows, rejected = count_rows(db), metric(url, "serve_rejected_total")
    load = drive(f"{url}/invocations", lambda i: bodies[i % 3], concurrency=48, seconds=4,
                 keep_body=True)  # fmt: skip
    refused = [a for a in load.answers if a.status == 503]
    answered = [a for a in load.answers if a.status == 200]
    assert refused and answered and len(refused) + len(answered) == len(load.answers)
    assert all(a.retry_after == "1" and b"overloaded" in a.body for a in refused)
    assert metric(url, "serve_rejected_total") - rejected == len(refused)
    status, _, _ = post(f"{url}/invocations", bodies[0])
    assert status == 200 and proc.poll() is None
    want = rows + 128 * (len(answered) + 1)
    deadline = time.monotonic() + 60  # thousands of rows with pixels, on a busy machine
    while count_rows(db) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count_rows(db) == want  # every image answered is logged, none refused is
    assert metric(url, "serve_queue_images") == 0


def test_the_webhook_needs_mlflows_signature(served):
    from mlflow.webhooks.delivery import _generate_hmac_signature  # MLflow's own signer

    _, url, _ = served
    payload = json.dumps({"entity": "model_version_alias", "action": "created",
                          "data": {"name": NAME, "alias": "champion", "version": "1"}})  # fmt: skip
    stamp = str(int(time.time()))
    good = {
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": _generate_hmac_signature(SECRET, "d-1", stamp, payload),
    }
    assert post(f"{url}/webhooks/mlflow", payload.encode(), headers=good)[0] == 200
    forged = {
        **good,
        "X-MLflow-Signature": _generate_hmac_signature("wrong", "d-1", stamp, payload),
    }
    assert post(f"{url}/webhooks/mlflow", payload.encode(), headers=forged)[0] == 401
    assert post(f"{url}/webhooks/mlflow", payload.encode())[0] == 401


def test_an_open_inference_protocol_client_in_json_and_binary(served):
    """NVIDIA's tritonclient (PyPI) in its default settings (binary tensors both ways) and in
    JSON: server and model metadata, readiness, inference, a pinned version."""
    import tritonclient.http as oip
    from tritonclient.utils import InferenceServerException

    project, url, _ = served
    client = oip.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready(NAME)
    [version] = client.get_model_metadata(NAME)["versions"]
    assert client.is_model_ready(NAME, version) and not client.is_model_ready(NAME, "999")
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        x = z["x"][:16]
    expected = pyfunc_probs(project, version, x)

    def infer(x, datatype, binary=None, **kw):
        tensor = oip.InferInput("images", list(x.shape), datatype)
        if binary is None:  # the client's defaults: binary in, all outputs binary
            tensor.set_data_from_numpy(x)
            return client.infer(NAME, [tensor], **kw)
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = [oip.InferRequestedOutput("probabilities", binary_data=binary)]
        return client.infer(NAME, [tensor], outputs=wanted, **kw)

    for datatype, data in (("UINT8", x), ("FP32", x.astype(np.float32))):
        for binary in (None, True, False):
            result = infer(data, datatype, binary)
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
            assert result.get_response()["model_version"] == version
    pinned = infer(x, "UINT8", model_version=version)
    np.testing.assert_allclose(pinned.as_numpy("probabilities"), expected, atol=1e-5)
    with pytest.raises(InferenceServerException, match="version '999' is not served"):
        infer(x, "UINT8", model_version="999")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}/v2/models/{NAME}/versions/999", timeout=10)
    assert e.value.code == 404 and list(json.loads(e.value.read())) == ["error"]


def test_malformed_binary_bodies_get_400_and_one_line(served):
    _, url, proc = served
    raw = np.zeros((1, 28, 28), np.uint8).tobytes()
    tensor = {"name": "x", "shape": [1, 28, 28], "datatype": "FP32",
              "parameters": {"binary_data_size": 784}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    for length, words in ((len(header), "4-byte values"), (len(header) + 900, "past the end")):
        status, _, out = post(f"{url}/v2/models/{NAME}/infer", header + raw,
                              "application/octet-stream",
                              {"Inference-Header-Content-Length": str(length)})  # fmt: skip
        assert status == 400 and words in out["error"] and "\n" not in out["error"]
    assert proc.poll() is None
