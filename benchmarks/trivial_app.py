"""The serving stack's ceiling for ``benchmarks.serve``: FastAPI on uvicorn (uvloop,
httptools) reading the same JSON body as ``/invocations`` with orjson and answering 10
numbers per image. No model, no batching, no log, no metrics: what the stack costs alone.

    uvicorn benchmarks.trivial_app:app --loop uvloop --http httptools --port 8081
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()
_TEN = [0.1] * 10


@app.get("/ping")
async def ping() -> Response:
    return Response(b"", media_type="application/json")


@app.post("/invocations")
async def invocations(request: Request) -> Response:
    body = orjson.loads(await request.body())
    n = len(body["inputs"])  # images, each 28 rows of 28 pixels (not checked)
    return Response(orjson.dumps({"predictions": [_TEN] * n}), media_type="application/json")
