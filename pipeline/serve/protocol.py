"""Requests and answers of the three ways in, as pure functions (no web framework here).

- ``POST /invocations``: MLflow's scoring protocol for this model's tensor signature,
  ``{"inputs": [...]}`` (or ``{"instances": [...]}``) of N×28×28 pixels ->
  ``{"predictions": [[10 probabilities], ...]}``, as ``mlflow models serve`` answers;
- ``POST /v2/models/<name>[/versions/<v>]/infer``: the Open Inference Protocol (KServe
  V2), one input tensor ``[N, 28, 28]`` of ``FP32`` or ``UINT8``, whatever its name, as
  JSON or with the binary tensor data extension (Triton's, KServe's and OpenVINO's): a
  JSON header of ``Inference-Header-Content-Length`` bytes, then the raw tensor
  (``binary_data_size``); outputs in binary when asked (``binary_data_output`` for all,
  or ``binary_data`` on a requested output);
- ``POST /predict``: image files, normalised as ``pipeline.predict`` does.

Every bad request raises :class:`BadRequest`: a 4xx status and one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from pipeline.core import imaging
from pipeline.core.errors import DataError

SIDE = 28
V2_DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
V2_OUTPUT = "probabilities"
# The response header the binary extension adds (requests send the same one).
BINARY_HEADER = "Inference-Header-Content-Length"
SERVER_EXTENSIONS = ["binary_tensor_data"]


class BadRequest(Exception):
    """A request refused with ``status`` and one line; ``code`` names it as MLflow's REST
    errors do (``error_code`` of the MLflow-style answers)."""

    CODES = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
             503: "TEMPORARILY_UNAVAILABLE"}  # fmt: skip

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    @property
    def code(self) -> str:
        return self.CODES.get(self.status, "BAD_REQUEST")


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
    return checked(x)


def checked(x: np.ndarray) -> np.ndarray:
    """``x`` if it is N×28×28 finite pixels in 0-255 (N >= 1), else :class:`BadRequest`."""
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise BadRequest(f"expected N×28×28 pixels, got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise BadRequest("no images: N is 0")
    low, high = x.min(), x.max()  # NaN propagates into both; inf is out of range anyway
    if not (np.isfinite(low) and np.isfinite(high)):
        raise BadRequest("pixels must be finite numbers (found NaN or inf)")
    if low < 0 or high > 255:
        raise BadRequest(f"pixels must be in 0-255 (found {low:g}..{high:g})")
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


@dataclass(frozen=True)
class V2Request:
    """An Open Inference Protocol request, parsed."""

    x: np.ndarray  # (N, 28, 28) float32
    request_id: str | None  # the request's "id", echoed in the answer
    input_name: str
    binary_output: bool  # answer the probabilities as raw little-endian FP32


def parse_v2(body: bytes, header_length: str | None = None) -> V2Request:
    """An Open Inference Protocol request, in JSON or with the binary tensor data
    extension (``header_length``: the request's Inference-Header-Content-Length)."""
    header, raw = _split_binary(body, header_length)
    payload = _json(header)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise BadRequest('expected {"inputs": [{"name", "shape", "datatype", "data"}]}')
    if len(payload["inputs"]) != 1:
        raise BadRequest(f"expected one input tensor, got {len(payload['inputs'])}")
    tensor = payload["inputs"][0]
    size = _parameters(tensor).get("binary_data_size") if isinstance(tensor, dict) else None
    need = {"shape", "datatype"} | ({"data"} if size is None else set())
    if not isinstance(tensor, dict) or not need <= set(tensor):
        raise BadRequest("the input tensor needs shape, datatype and data (or binary_data_size)")
    datatype = str(tensor["datatype"]).upper()
    if datatype not in V2_DATATYPES:
        raise BadRequest(f"datatype {tensor['datatype']!r}: use FP32 or UINT8")
    shape = tensor["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int for d in shape)):
        raise BadRequest(f"shape must be [N, 28, 28], got {shape!r}")
    if size is not None:
        x = _binary_tensor(raw, size, shape, V2_DATATYPES[datatype])
    else:
        if raw:
            raise BadRequest(f"{len(raw)} bytes after the JSON header, and no input has "
                             "binary_data_size")  # fmt: skip
        x = images(tensor["data"], shape)
        if datatype == "UINT8" and not np.array_equal(x, np.rint(x)):
            raise BadRequest("UINT8 data must be whole numbers")
    request_id = payload.get("id")
    return V2Request(
        x,
        str(request_id) if request_id is not None else None,
        str(tensor.get("name", "")),
        _binary_output(payload),
    )


def _parameters(obj: dict) -> dict:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("parameters must be a JSON object")
    return params


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, the bytes after it) of a request body."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) == 0:
        raise BadRequest(f"{BINARY_HEADER} must be a whole number of bytes > 0, "
                         f"got {header_length!r}")  # fmt: skip
    n = int(header_length)
    if n > len(body):
        raise BadRequest(f"{BINARY_HEADER} {n} is past the end of the {len(body)}-byte body")
    return body[:n], body[n:]


def _binary_tensor(raw: bytes, size: Any, shape: list[int], dtype: np.dtype) -> np.ndarray:
    if type(size) is not int or size < 0:
        raise BadRequest(f"binary_data_size must be a whole number of bytes, got {size!r}")
    values = int(np.prod(shape)) if all(d >= 0 for d in shape) else -1
    need = values * dtype.itemsize
    if values < 0 or size != need:
        raise BadRequest(f"binary_data_size {size} does not fit shape {shape} of "
                         f"{dtype.itemsize}-byte values ({need} bytes)")  # fmt: skip
    if len(raw) != size:
        raise BadRequest(f"binary_data_size {size} does not add up: {len(raw)} bytes follow "
                         "the JSON header")  # fmt: skip
    return checked(np.frombuffer(raw, dtype).reshape(shape).astype(np.float32))


def _binary_output(payload: dict) -> bool:
    """Whether the answer's probabilities go in binary: ``binary_data`` of the requested
    output, else the request's ``binary_data_output``; an output we lack is a 400."""
    default = _parameters(payload).get("binary_data_output", False)
    outputs = payload.get("outputs")
    if outputs is None:
        return bool(default)
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest('outputs must be a list of {"name": ...}')
    for out in outputs:
        if out.get("name") != V2_OUTPUT:
            raise BadRequest(f"unknown output {out.get('name')!r}: this model has {V2_OUTPUT!r}")
    return bool(_parameters(outputs[0]).get("binary_data", default)) if outputs else bool(default)


def v2_answer(
    probs: np.ndarray, name: str, version: str, request_id: str, binary: bool = False
) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) of an inference answer: JSON, or a JSON header followed by
    the probabilities as little-endian FP32 (the binary tensor data extension)."""
    output: dict[str, Any] = {"name": V2_OUTPUT, "shape": list(probs.shape), "datatype": "FP32"}
    if binary:
        raw = np.ascontiguousarray(probs, dtype="<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = probs.reshape(-1)
    answer = {"model_name": name, "model_version": version, "id": request_id,
              "outputs": [output]}  # fmt: skip
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, {}
    return header + raw, {BINARY_HEADER: str(len(header))}


def v2_server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``: the server, its version and the protocol extensions it speaks."""
    return {"name": "pipeline.serve", "version": version, "extensions": SERVER_EXTENSIONS}


def v2_metadata(name: str, version: str, engine: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version],
        "platform": f"pipeline.serve ({engine})",
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, SIDE, SIDE]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }


def from_files(blobs: list[tuple[str, bytes]]) -> np.ndarray:
    """Uploaded images as ``pipeline.predict`` normalises files: (N, 28, 28) float32."""
    try:
        out = [imaging.to_mnist(imaging.image_from_bytes(data, name)) for name, data in blobs]
    except DataError as e:
        raise BadRequest(str(e)) from None
    return np.stack(out).astype(np.float32)


def parse_feedback(payload: Any) -> tuple[str, int, int]:
    """``POST /feedback``'s (request id, true digit, image index), or :class:`BadRequest`."""
    if not isinstance(payload, dict) or "request_id" not in payload or "digit" not in payload:
        raise BadRequest('expected {"request_id": "...", "digit": 0-9} (and "index" if the '
                         "request had several images)")  # fmt: skip
    rid, digit, index = payload["request_id"], payload["digit"], payload.get("index", 0)
    if not isinstance(rid, str) or not 1 <= len(rid) <= 36:
        raise BadRequest("request_id must be the X-Request-Id of a prediction")
    if type(digit) is not int or not 0 <= digit <= 9:
        raise BadRequest(f"digit must be a whole number 0-9, got {digit!r}")
    if type(index) is not int or index < 0:
        raise BadRequest(f"index must be a whole number >= 0, got {index!r}")
    return rid, digit, index
