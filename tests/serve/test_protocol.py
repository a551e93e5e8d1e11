"""The three ways in, parsed and answered without a server."""

import json

import numpy as np
import pytest

from pipeline.serve.protocol import (
    BadRequest,
    images,
    invocations_answer,
    parse_invocations,
    parse_v2,
    v2_answer,
)


def test_mlflow_inputs_and_instances_give_float_images():
    x = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    for key in ("inputs", "instances"):
        got = parse_invocations(json.dumps({key: x.tolist()}).encode())
        assert got.dtype == np.float32 and got.shape == (2, 28, 28)
        np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize(
    "data,words",
    [
        ([], "empty"),
        ([[1, 2]], "shape"),
        ("abc", "numbers"),
        ([[[None] * 28] * 28], "numbers"),
        ([[[float("inf")] * 28] * 28], "finite"),
        ([[[256] * 28] * 28], "0-255"),
        ([[[1, 2]] * 28], "shape"),
    ],
)
def test_bad_pixels_are_refused_in_one_line(data, words):
    with pytest.raises(BadRequest) as e:
        images(data)
    assert words in str(e.value) and "\n" not in str(e.value) and e.value.status == 400


def test_v2_request_any_input_name_fp32_or_uint8():
    flat = [i % 256 for i in range(784)]
    body = {"id": "abc", "inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "UINT8",
                                     "data": flat}]}  # fmt: skip
    req = parse_v2(json.dumps(body).encode())
    assert req.x.shape == (1, 28, 28) and req.request_id == "abc" and req.input_name == "x"
    assert not req.binary_output
    body["inputs"][0]["data"] = [0.5] * 784
    with pytest.raises(BadRequest, match="whole numbers"):
        parse_v2(json.dumps(body).encode())
    body["inputs"][0]["datatype"] = "FP32"
    assert parse_v2(json.dumps(body).encode()).x.max() == 0.5
    body["inputs"].append(body["inputs"][0])
    with pytest.raises(BadRequest, match="one input"):
        parse_v2(json.dumps(body).encode())


def test_answers():
    probs = np.full((2, 10), 0.05, np.float32)
    probs[0, 3], probs[1, 7] = 0.55, 0.55
    assert json.loads(invocations_answer(probs))["predictions"][0][3] == pytest.approx(0.55)
    body, headers = v2_answer(probs, "m", "4", "id-1")
    v2 = json.loads(body)
    assert headers == {}
    assert v2["model_version"] == "4" and v2["outputs"][0]["shape"] == [2, 10]
    assert len(v2["outputs"][0]["data"]) == 20


def _binary(x: np.ndarray, datatype: str = "UINT8", **request) -> tuple[bytes, str]:
    """A request with the binary tensor data extension, as tritonclient builds it."""
    raw = x.tobytes()
    header = json.dumps({
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)}}], **request,
    }).encode()  # fmt: skip
    return header + raw, str(len(header))


def test_v2_binary_tensors_in_and_out():
    x = (np.arange(2 * 784) % 256).astype(np.uint8).reshape(2, 28, 28)
    body, length = _binary(x, parameters={"binary_data_output": True})
    req = parse_v2(body, length)
    np.testing.assert_array_equal(req.x, x.astype(np.float32))
    assert req.binary_output and req.x.dtype == np.float32
    json_out = [{"name": "probabilities", "parameters": {"binary_data": False}}]
    body, length = _binary(x.astype("<f4") / 2, "FP32", outputs=json_out)
    req = parse_v2(body, length)
    assert req.x.max() == 127.5 and not req.binary_output

    probs = np.random.default_rng(0).random((2, 10), np.float32)
    answer, headers = v2_answer(probs, "m", "4", "id", binary=True)
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(answer[:n])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 80}
    assert "data" not in head["outputs"][0]
    np.testing.assert_array_equal(np.frombuffer(answer[n:], "<f4").reshape(2, 10), probs)


@pytest.mark.parametrize(
    "mangle, words",
    [
        (lambda b, n: (b[:-4], n), "does not add up"),  # lengths that do not add up
        (lambda b, n: (b + b"xx", n), "does not add up"),
        (lambda b, n: (b, str(len(b) + 1)), "past the end"),  # a header past the end
        (lambda b, n: (b, "-3"), "whole number"),
        (lambda b, n: (b, "12"), "not valid JSON"),  # a header cut short
        # the wrong datatype size: FP32 declared, one byte a value sent
        (lambda b, n: _binary(np.zeros((1, 28, 28), np.uint8), "FP32"), "4-byte values"),
        (lambda b, n: (b, None), "not valid JSON"),  # binary without the header length
    ],
)
def test_malformed_binary_bodies_are_one_line_400s(mangle, words):
    body, length = mangle(*_binary(np.zeros((1, 28, 28), np.uint8)))
    with pytest.raises(BadRequest) as e:
        parse_v2(body, length)
    assert words in str(e.value) and "\n" not in str(e.value) and e.value.status == 400


def test_v2_outputs_we_do_not_have_are_refused():
    x = np.zeros((1, 28, 28), np.uint8)
    body, length = _binary(x, outputs=[{"name": "logits"}])
    with pytest.raises(BadRequest, match="unknown output 'logits'"):
        parse_v2(body, length)
