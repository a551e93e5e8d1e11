"""The three ways in, parsed and answered without a server."""

import json

import numpy as np
import pytest

from pipeline.serve.protocol import (
    BadRequest,
    images,
    invocations_answer,
    log_rows,
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
    x, rid, name = parse_v2(json.dumps(body).encode())
    assert x.shape == (1, 28, 28) and rid == "abc" and name == "x"
    body["inputs"][0]["data"] = [0.5] * 784
    with pytest.raises(BadRequest, match="whole numbers"):
        parse_v2(json.dumps(body).encode())
    body["inputs"][0]["datatype"] = "FP32"
    assert parse_v2(json.dumps(body).encode())[0].max() == 0.5
    body["inputs"].append(body["inputs"][0])
    with pytest.raises(BadRequest, match="one input"):
        parse_v2(json.dumps(body).encode())


def test_answers_and_log_rows():
    probs = np.full((2, 10), 0.05, np.float32)
    probs[0, 3], probs[1, 7] = 0.55, 0.55
    assert json.loads(invocations_answer(probs))["predictions"][0][3] == pytest.approx(0.55)
    v2 = json.loads(v2_answer(probs, "m", "4", "id-1"))
    assert v2["model_version"] == "4" and v2["outputs"][0]["shape"] == [2, 10]
    assert len(v2["outputs"][0]["data"]) == 20
    x = np.full((2, 28, 28), 254.6, np.float32)
    rows = log_rows(x, probs, "r", "invocations", "4", "t", 1.5, pixels=True)
    assert [r["digit"] for r in rows] == [3, 7] and [r["position"] for r in rows] == [0, 1]
    assert rows[0]["pixels"] == bytes([255]) * 784 and rows[1]["probability"] == pytest.approx(0.55)
    assert log_rows(x, probs, "r", "v2", "4", "t", 1.5, pixels=False)[0]["pixels"] is None
