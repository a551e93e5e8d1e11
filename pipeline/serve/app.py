"""The FastAPI app: the three ways in, health, metrics, feedback and the MLflow webhook.

Every prediction answer carries ``X-Model-Version`` and ``X-Request-Id`` (the id to send
back to ``POST /feedback``); every image answered is a row of the prediction log.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from pipeline.core.errors import PipelineError
from pipeline.serve import metrics, protocol
from pipeline.serve.batcher import Batcher, Overloaded
from pipeline.serve.champion import WEBHOOK_SECRET_ENV, Champion, verify_webhook
from pipeline.serve.keys import KeyCheck, Keys
from pipeline.serve.log import LogError, PredictionLog
from pipeline.serve.protocol import BadRequest

log = logging.getLogger(__name__)
# Set on SIGTERM (pipeline.serve's drain): readiness answers 503 while requests are still
# answered, so a load balancer stops sending before the process stops accepting.
DRAINING = threading.Event()

try:  # GET /v2 names the server's version
    SERVER_VERSION = importlib.metadata.version("lenet5-mnist-mlops")
except importlib.metadata.PackageNotFoundError:  # run from a checkout without pip install
    SERVER_VERSION = "0"


@dataclass
class Service:
    """What the app serves with; built by ``pipeline.serve`` (see __main__)."""

    champion: Champion
    log: PredictionLog
    batcher: Batcher
    max_body: int  # bytes
    log_pixels: bool
    keys: Keys
    keys_for_predictions: bool  # serve.keys_for_predictions: 401/403 without a valid key


def _answer(
    endpoint: str, status: int, body: bytes, start: float, headers=None,
    media_type: str = "application/json",
) -> Response:  # fmt: skip
    metrics.answered(endpoint, status, time.perf_counter() - start)
    return Response(body, status, headers=headers, media_type=media_type)


def _error(endpoint: str, e: BadRequest, start: float, v2: bool = False) -> Response:
    body = {"error": str(e)} if v2 else {"error_code": e.code, "message": str(e)}
    return _answer(endpoint, e.status, orjson.dumps(body), start)


def _overloaded(endpoint: str, e: Overloaded, start: float, v2: bool = False) -> Response:
    """503 with Retry-After, at once: the client (or the load balancer) tries again."""
    metrics.REJECTED.labels(reason=e.reason).inc()
    body = {"error": str(e)} if v2 else {"error_code": "TEMPORARILY_UNAVAILABLE",
                                         "message": str(e)}  # fmt: skip
    return _answer(endpoint, 503, orjson.dumps(body), start, {"Retry-After": "1"})


class BodyLimit:
    """Refuse bodies over ``max_body`` bytes (HTTP 413), by Content-Length or as they
    arrive, before any of it is parsed. The rest of the body is read and dropped (up to
    4x the limit) so that the client, still sending, reads the answer."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await self._refuse(receive, send, 0)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body and message.get("more_body"):
                raise _TooLarge
            if seen > self.max_body:
                raise _TooLarge(True)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge as e:
            await self._refuse(receive, send, seen, done=bool(e.args and e.args[0]))

    async def _refuse(self, receive, send, seen: int, done: bool = False) -> None:
        while not done and seen <= 4 * self.max_body:
            message = await receive()
            seen += len(message.get("body", b""))
            done = not message.get("more_body") or message["type"] == "http.disconnect"
        mb = self.max_body / 2**20
        body = orjson.dumps(
            {"error_code": "REQUEST_TOO_LARGE", "message": f"request body over {mb:g} MB"}
        )
        metrics.REQUESTS.labels(endpoint="any", status="413").inc()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(make_service) -> FastAPI:
    """The app; ``make_service()`` builds the :class:`Service` at startup (in each worker)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            svc: Service = await run_in_threadpool(make_service)
        except PipelineError as e:  # one line, not uvicorn's traceback (another --workers one)
            log.error("%s", e)
            os._exit(1)
        svc.batcher.start()
        app.state.svc = svc
        loaded = svc.champion.current
        log.info("ready: %s v%s (%s)", loaded.name, loaded.version, loaded.engine)
        try:
            yield
        finally:  # uvicorn has drained the requests in flight
            svc.champion.stop()
            await svc.batcher.stop()
            await run_in_threadpool(svc.log.close)
            log.info("stopped: %d predictions logged", svc.log.written)

    app = FastAPI(title="lenet5-mnist scoring service", lifespan=lifespan, docs_url=None,
                  redoc_url=None)  # fmt: skip
    app.add_middleware(KeyCheck)

    async def score(request: Request, endpoint: str, x: np.ndarray, start: float, ts, rid: str,
                    version: str | None = None):  # fmt: skip
        svc: Service = request.app.state.svc
        model = svc.champion.current  # the version this request is answered by
        if version is not None and model.version != version:
            return None, None
        probs = await svc.batcher.predict(x, model)
        latency_ms = (time.perf_counter() - start) * 1000
        meta = {"id": rid, "endpoint": endpoint, "version": model.version,
                "ts": ts.isoformat(), "latency_ms": latency_ms}  # fmt: skip
        svc.log.add(x, probs, meta, svc.log_pixels)  # in the spool before the answer leaves
        return model, probs

    def _begin() -> tuple[float, datetime.datetime, str]:
        return time.perf_counter(), datetime.datetime.now(datetime.UTC), uuid.uuid4().hex

    def _headers(model, rid: str) -> dict[str, str]:
        return {"X-Model-Version": model.version, "X-Request-Id": rid}

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        start, ts, rid = _begin()
        try:
            body = await request.body()
            request.app.state.svc.batcher.admit()  # before the parse: refusing is cheap
            x = protocol.parse_invocations(body)
            model, probs = await score(request, "invocations", x, start, ts, rid)
        except BadRequest as e:
            return _error("invocations", e, start)
        except Overloaded as e:
            return _overloaded("invocations", e, start)
        return _answer("invocations", 200, protocol.invocations_answer(probs), start,
                       _headers(model, rid))  # fmt: skip

    def _unknown(svc: Service, name: str, version: str | None) -> BadRequest | None:
        """404 for a model or version this service does not serve now, else None."""
        served = svc.champion.current
        if name != served.name:
            return BadRequest(f"unknown model {name!r}: this service serves {served.name!r}", 404)
        if version is not None and version != served.version:
            serving = f"version {served.version} ({name}@{svc.champion.alias})"
            return BadRequest(f"{name} version {version!r} is not served: this service serves "
                              f"{serving}", 404)  # fmt: skip
        return None

    async def v2_infer(request: Request, name: str, version: str | None = None) -> Response:
        start, ts, rid = _begin()
        svc: Service = request.app.state.svc
        try:
            unknown = _unknown(svc, name, version)
            if unknown:
                raise unknown
            body = await request.body()
            svc.batcher.admit()
            req = protocol.parse_v2(body, request.headers.get(protocol.BINARY_HEADER))
            model, probs = await score(request, "v2", req.x, start, ts, rid, version)
        except BadRequest as e:
            return _error("v2_infer", e, start, v2=True)
        except Overloaded as e:
            return _overloaded("v2_infer", e, start, v2=True)
        if model is None:  # the alias moved away from the version asked for
            gone = BadRequest(f"{name} version {version!r} is no longer served", 404)
            return _error("v2_infer", gone, start, v2=True)
        body, extra = protocol.v2_answer(probs, model.name, model.version,
                                         req.request_id or rid, req.binary_output)  # fmt: skip
        return _answer("v2_infer", 200, body, start, {**_headers(model, rid), **extra},
                       "application/octet-stream" if extra else "application/json")  # fmt: skip

    app.add_api_route("/v2/models/{name}/infer", v2_infer, methods=["POST"])
    app.add_api_route("/v2/models/{name}/versions/{version}/infer", v2_infer, methods=["POST"])

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        start, ts, rid = _begin()
        svc: Service = request.app.state.svc
        try:
            form = await request.form(max_part_size=svc.max_body)
            files = [f for f in form.getlist("files") if hasattr(f, "read")]
            if not files:
                raise BadRequest('no image: send files as multipart form field "files"')
            blobs = [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]
            svc.batcher.admit()
            x = await run_in_threadpool(protocol.from_files, blobs)
            model, probs = await score(request, "predict", x, start, ts, rid)
        except BadRequest as e:
            return _error("predict", e, start)
        except Overloaded as e:
            return _overloaded("predict", e, start)
        digits = probs.argmax(axis=1)
        body = {
            "request_id": rid,
            "model_version": model.version,
            "predictions": [
                {
                    "file": name,
                    "digit": int(d),
                    "probability": float(probs[i, d]),
                    "version": model.version,
                }  # fmt: skip
                for i, ((name, _), d) in enumerate(zip(blobs, digits, strict=True))
            ],
        }
        return _answer("predict", 200, orjson.dumps(body), start, _headers(model, rid))

    @app.post("/feedback")
    async def post_feedback(request: Request) -> Response:
        """A true label, from a key's holder, for an image this service answered."""
        start = time.perf_counter()
        svc: Service = request.app.state.svc
        try:
            sender = await run_in_threadpool(
                svc.keys.sender, request.headers.get("authorization"), True
            )
            payload = protocol._json(await request.body())
            rid, digit, index = protocol.parse_feedback(payload)
            if not await run_in_threadpool(svc.log.label, rid, index, digit, sender):
                raise BadRequest(
                    f"no image {index} of request {rid!r} in the prediction log: "
                    "labels are taken for images this service answered",
                    404,
                )
        except BadRequest as e:
            return _error("feedback", e, start)
        except LogError as e:  # the database is down: try again later, nothing half-stored
            return _error("feedback", BadRequest(str(e), 503), start)
        body = orjson.dumps({"request_id": rid, "index": index, "digit": digit,
                             "sender": sender})  # fmt: skip
        return _answer("feedback", 200, body, start)

    @app.post("/webhooks/mlflow")
    async def webhook(request: Request) -> Response:
        start = time.perf_counter()
        body = await request.body()
        problem = verify_webhook(request.headers, body, os.environ.get(WEBHOOK_SECRET_ENV, ""))
        if problem:
            log.warning("webhook refused: %s", problem)
            return _answer("webhook", 401, orjson.dumps({"error": problem}), start)
        request.app.state.svc.champion.wake()
        return _answer("webhook", 200, b'{"status": "checking the alias"}', start)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(b'{"live": true}', media_type="application/json")

    @app.get("/v2/health/ready")
    @app.get("/ping")
    @app.get("/health")
    async def ready(request: Request) -> Response:
        svc = getattr(request.app.state, "svc", None)
        ok = svc is not None and svc.champion.current is not None and not DRAINING.is_set()
        body = {"ready": ok, **({"draining": True} if DRAINING.is_set() else {})}
        return Response(orjson.dumps(body), 200 if ok else 503, media_type="application/json")

    def _v2_error(e: BadRequest) -> Response:
        return Response(orjson.dumps({"error": str(e)}), e.status, media_type="application/json")

    @app.get("/v2")
    async def server_metadata() -> Response:
        return Response(orjson.dumps(protocol.v2_server_metadata(SERVER_VERSION)),
                        media_type="application/json")  # fmt: skip

    async def model_metadata(request: Request, name: str, version: str | None = None):
        svc: Service = request.app.state.svc
        unknown = _unknown(svc, name, version)
        if unknown:
            return _v2_error(unknown)
        loaded = svc.champion.current
        meta = protocol.v2_metadata(loaded.name, loaded.version, loaded.engine)
        return Response(orjson.dumps(meta), media_type="application/json",
                        headers={"X-Model-Version": loaded.version})  # fmt: skip

    async def model_ready(request: Request, name: str, version: str | None = None):
        svc: Service | None = getattr(request.app.state, "svc", None)
        if svc is None or svc.champion.current is None or DRAINING.is_set():
            return Response(orjson.dumps({"name": name, "ready": False}), 503,
                            media_type="application/json")  # fmt: skip
        unknown = _unknown(svc, name, version)
        if unknown:
            return _v2_error(unknown)
        return Response(orjson.dumps({"name": name, "ready": True}), media_type="application/json",
                        headers={"X-Model-Version": svc.champion.current.version})  # fmt: skip

    app.add_api_route("/v2/models/{name}", model_metadata, methods=["GET"])
    app.add_api_route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"])
    app.add_api_route("/v2/models/{name}/ready", model_ready, methods=["GET"])
    app.add_api_route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"])

    @app.get("/metrics")
    async def get_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return app
