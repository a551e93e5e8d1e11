"""Feedback keys: who may send labels to ``POST /feedback`` (and, with
``serve.keys_for_predictions``, ask for predictions).

``python -m pipeline.serve keys add NAME`` prints a new key once; the prediction log keeps
only its SHA-256 (table ``feedback_keys``), so every replica sharing the log knows it and a
leaked database leaks no key. ``keys list`` shows them, ``keys revoke NAME`` ends one: its
requests get 403 from then on, and the feedback dataset leaves out every label it sent.
A key is 256 random bits, so one SHA-256 is enough (no salt, no slow hash: it is not a
password a person chose).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
import re
import secrets
import sys
import threading
import time
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from pipeline.core.errors import PipelineError, first_line
from pipeline.core.predlog import LogError, feedback, feedback_keys
from pipeline.serve import metrics
from pipeline.serve.protocol import BadRequest

log = logging.getLogger(__name__)
PREFIX = "lnk_"  # recognisable in a leaked config, like GitHub's ghp_
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add(engine: sa.Engine, name: str) -> str:
    """A new key for ``name`` (shown once, stored hashed); a name is never reused."""
    if not NAME.fullmatch(name):
        raise PipelineError(f"key name {name!r}: letters, digits, '.', '_', '@', '-' (1-64)")
    key = PREFIX + secrets.token_urlsafe(32)
    row = {"name": name, "key_sha256": digest(key),
           "created": datetime.datetime.now(datetime.UTC), "revoked": None}  # fmt: skip
    try:
        with engine.begin() as conn:
            taken = conn.execute(sa.select(feedback_keys.c.name).where(
                feedback_keys.c.name == name)).first()  # fmt: skip
            if taken:
                raise PipelineError(f"key {name!r} exists (names are never reused: "
                                    "their labels stay theirs); pick another name")  # fmt: skip
            conn.execute(feedback_keys.insert(), [row])
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"feedback keys: {first_line(e)}") from None
    return key


def revoke(engine: sa.Engine, name: str) -> None:
    """End a key now: 403 from then on; the next feedback dataset drops its labels."""
    k = feedback_keys
    now = datetime.datetime.now(datetime.UTC)
    try:
        with engine.begin() as conn:
            found = conn.execute(sa.select(k.c.revoked).where(k.c.name == name)).first()
            if found is None:
                raise PipelineError(f"no key named {name!r} (python -m pipeline.serve keys list)")
            if found.revoked is None:
                conn.execute(k.update().where(k.c.name == name).values(revoked=now))
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"feedback keys: {first_line(e)}") from None


def listing(engine: sa.Engine) -> list[dict]:
    """Every key: name, created, revoked (or None) and the labels it sent."""
    k, f = feedback_keys, feedback
    labels = sa.select(f.c.sender, sa.func.count().label("n")).group_by(f.c.sender).subquery()
    query = (sa.select(k.c.name, k.c.created, k.c.revoked, labels.c.n)
             .outerjoin(labels, labels.c.sender == k.c.name).order_by(k.c.created))  # fmt: skip
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"feedback keys: {first_line(e)}") from None
    return [{"name": r.name, "created": r.created, "revoked": r.revoked, "labels": r.n or 0}
            for r in rows]  # fmt: skip


class Keys:
    """The service's check of ``Authorization: Bearer <key>``: 401 without a known key,
    403 for a revoked one. Answers are cached ``ttl_s`` (prediction requests must not each
    ask the database); ``fresh=True`` (feedback) always asks."""

    def __init__(self, engine: sa.Engine, ttl_s: float = 5.0) -> None:
        self.engine, self.ttl_s = engine, ttl_s
        self._cache: dict[str, tuple[float, str | None, bool]] = {}
        self._lock = threading.Lock()

    def sender(self, authorization: str | None, fresh: bool = False) -> str:
        """The name of the key in the header, or :class:`BadRequest` 401/403 (503 when the
        database cannot be asked)."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise BadRequest("a feedback key is needed: Authorization: Bearer <key> "
                             "(python -m pipeline.serve keys add NAME)", 401)  # fmt: skip
        h = digest(key.strip())
        now = time.monotonic()
        cached = None if fresh else self._cache.get(h)
        if cached is None or now - cached[0] > self.ttl_s:
            cached = (now, *self._lookup(h))
            with self._lock:
                if len(self._cache) > 10_000:  # (unknown keys must not grow it forever)
                    self._cache.clear()
                self._cache[h] = cached
        _, name, revoked = cached
        if name is None:
            raise BadRequest("unknown key", 401)
        if revoked:
            raise BadRequest(f"key {name!r} was revoked", 403)
        return name

    def _lookup(self, h: str) -> tuple[str | None, bool]:
        k = feedback_keys
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(k.c.name, k.c.revoked).where(
                    k.c.key_sha256 == h)).first()  # fmt: skip
        except sa.exc.SQLAlchemyError as e:
            raise BadRequest(f"keys cannot be checked now: {first_line(e)}", 503) from None
        return (None, False) if row is None else (row.name, row.revoked is not None)


class KeyCheck:
    """With ``serve.keys_for_predictions``, the prediction endpoints need a key too (401
    without one, 403 revoked), checked before the body is read. Health, metadata and
    metrics stay open: a load balancer and Prometheus hold no key."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        svc = getattr(scope.get("app") and scope["app"].state, "svc", None)
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or svc is None
            or not svc.keys_for_predictions
            or not (path in ("/invocations", "/predict") or path.endswith("/infer"))
        ):
            return await self.app(scope, receive, send)
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        try:
            await run_in_threadpool(svc.keys.sender, auth or None)
        except BadRequest as e:
            body = orjson.dumps({"error_code": e.code, "message": str(e)})
            metrics.REQUESTS.labels(endpoint="any", status=str(e.status)).inc()
            await send({"type": "http.response.start", "status": e.status,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return None
        return await self.app(scope, receive, send)


def main(argv: list[str], engine: sa.Engine) -> None:
    """``python -m pipeline.serve keys add NAME | list | revoke NAME``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve keys",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("add", help="issue a key (printed once)").add_argument("name")
    sub.add_parser("list", help="every key, revoked or not, and its labels")
    sub.add_parser("revoke", help="end a key; its labels leave the next dataset").add_argument(
        "name")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "add":
        key = add(engine, args.name)
        log.info("key %r added; it is shown this once, keep it secret:", args.name)
        sys.stdout.write(key + "\n")  # stdout: the one thing a script captures
    elif args.command == "revoke":
        revoke(engine, args.name)
        log.info("key %r revoked: 403 from now on; the next feedback dataset leaves out "
                 "its labels", args.name)  # fmt: skip
    else:
        rows = listing(engine)
        if not rows:
            log.info("no keys yet: python -m pipeline.serve keys add NAME")
        for r in rows:
            state = f"revoked {r['revoked']:%Y-%m-%d %H:%M}" if r["revoked"] else "active"
            sys.stdout.write(f"{r['name']:<24} created {r['created']:%Y-%m-%d %H:%M}  "
                             f"{state:<24} {r['labels']} labels\n")  # fmt: skip
