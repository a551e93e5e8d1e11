"""Requests and answers of the three ways in, as pure functions (no web framework here).

- ``POST /invocations``: MLflow's scoring protocol for this model's tensor signature,
  ``{"inputs": [...]}`` (or ``{"instances": [...]}``) of N×28×28 pixels ->
  ``{"predictions": [[10 probabilities], ...]}``, as ``mlflow models serve`` answers;
- ``POST /v2/models/<name>/infer``: the Open Inference Protocol (KServe V2), one input
  tensor ``[N, 28, 28]`` of ``FP32`` or ``UINT8``, whatever its name;
- ``POST /predict``: image files, normalised as ``pipeline.predict`` does.

Every bad request raises :class:`BadRequest`: a 4xx status and one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

SIDE = 28
V2_DATATYPES = {"FP32": np.float32, "UINT8": np.uint8}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _json(body: bytes) -> Any:
    if not body:
        raise BadRequest("empty request body: expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON ({str(e).splitlines()[0]})") from None


def images(data: Any, shape: list[int] | None = None) -> np.ndarray:
    """Pixels as (N, 28, 28) float32 in 0-255, or :class:`BadRequest` saying what is
    wrong: not numbers, another shape, NaN/inf, a value outside 0-255, no image."""
    if isinstance(data, list | tuple) and len(data) == 0:
        raise BadRequest("no images: the input is an empty list")
    try:
        x = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadRequest("inputs must be numbers in nested lists of N×28×28 pixels") from None
    if shape is not None:
        if x.ndim != 1 and list(x.shape) != shape:
            raise BadRequest(f"data has shape {list(x.shape)}, not the declared {shape}")
        if x.size != int(np.prod(shape)):
            raise BadRequest(f"data holds {x.size} values, shape {shape} needs {np.prod(shape)}")
        x = x.reshape(shape)
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise BadRequest(f"expected N×28×28 pixels, got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise BadRequest("no images: N is 0")
    if not np.isfinite(x).all():
        raise BadRequest("pixels must be finite numbers (found NaN or inf)")
    if x.min() < 0 or x.max() > 255:
        raise BadRequest(f"pixels must be in 0-255 (found {x.min():g}..{x.max():g})")
    return x


def parse_invocations(body: bytes) -> np.ndarray:
    """MLflow's ``{"inputs": ...}`` or ``{"instances": ...}`` tensor input."""
    payload = _json(body)
    if not isinstance(payload, dict):
        raise BadRequest('expected a JSON object {"inputs": [...]}')
    keys = [k for k in ("inputs", "instances") if k in payload]
    if len(keys) != 1:
        raise BadRequest('expected exactly one of "inputs" or "instances" (N×28×28 pixels)')
    return images(payload[keys[0]])


def invocations_answer(probs: np.ndarray) -> bytes:
    return orjson.dumps({"predictions": probs}, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_v2(body: bytes) -> tuple[np.ndarray, str | None, str]:
    """(images, the request's ``id``, the input's name) of an Open Inference Protocol
    request."""
    payload = _json(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise BadRequest('expected {"inputs": [{"name", "shape", "datatype", "data"}]}')
    if len(payload["inputs"]) != 1:
        raise BadRequest(f"expected one input tensor, got {len(payload['inputs'])}")
    tensor = payload["inputs"][0]
    if not isinstance(tensor, dict) or not {"shape", "datatype", "data"} <= set(tensor):
        raise BadRequest("the input tensor needs shape, datatype and data")
    datatype = str(tensor["datatype"]).upper()
    if datatype not in V2_DATATYPES:
        raise BadRequest(f"datatype {tensor['datatype']!r}: use FP32 or UINT8")
    shape = tensor["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int for d in shape)):
        raise BadRequest(f"shape must be [N, 28, 28], got {shape!r}")
    x = images(tensor["data"], shape)
    if datatype == "UINT8" and not np.array_equal(x, np.rint(x)):
        raise BadRequest("UINT8 data must be whole numbers")
    request_id = payload.get("id")
    return x, (str(request_id) if request_id is not None else None), str(tensor.get("name", ""))


def v2_answer(probs: np.ndarray, name: str, version: str, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "model_name": name,
            "model_version": version,
            "id": request_id,
            "outputs": [
                {
                    "name": "probabilities",
                    "shape": list(probs.shape),
                    "datatype": "FP32",
                    "data": probs.reshape(-1),
                }
            ],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def v2_metadata(name: str, version: str, engine: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version],
        "platform": f"pipeline.serve ({engine})",
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, SIDE, SIDE]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }


def log_rows(
    x: np.ndarray, probs: np.ndarray, request_id: str, endpoint: str, version: str,
    ts: Any, latency_ms: float, pixels: bool,
) -> list[dict[str, Any]]:  # fmt: skip
    """One prediction-log row per image."""
    digits = probs.argmax(axis=1)
    raw = np.clip(np.rint(x), 0, 255).astype(np.uint8) if pixels else None
    return [
        {
            "request_id": request_id,
            "position": i,
            "ts": ts,
            "endpoint": endpoint,
            "model_version": version,
            "digit": int(digits[i]),
            "probability": float(probs[i, digits[i]]),
            "probabilities": [round(float(p), 7) for p in probs[i]],
            "pixels": raw[i].tobytes() if raw is not None else None,
            "latency_ms": latency_ms,
        }
        for i in range(len(x))
    ]
