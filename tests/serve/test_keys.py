"""Feedback keys: issued once and stored hashed, names never reused, revocation, the
service's check (401/403, cached for predictions, fresh for feedback) and
``serve.keys_for_predictions`` in front of the prediction endpoints."""

from __future__ import annotations

import asyncio
import types

import pytest
import sqlalchemy as sa

from pipeline.core.errors import PipelineError
from pipeline.serve import keys
from pipeline.serve.keys import KeyCheck
from pipeline.serve.log import open_engine
from pipeline.serve.protocol import BadRequest


@pytest.fixture
def engine(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'log.db'}")
    yield engine
    engine.dispose()


def status_of(call) -> int:
    with pytest.raises(BadRequest) as e:
        call()
    return e.value.status


def test_a_key_is_stored_hashed_and_names_are_never_reused(engine):
    key = keys.add(engine, "alice")
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT name, key_sha256 FROM feedback_keys")).all()
    assert stored == [("alice", keys.digest(key))] and key not in str(stored)
    with pytest.raises(PipelineError, match="exists"):
        keys.add(engine, "alice")
    with pytest.raises(PipelineError, match="letters"):
        keys.add(engine, "no spaces")
    with pytest.raises(PipelineError, match="no key named"):
        keys.revoke(engine, "carol")


def test_the_check_answers_401_unknown_and_403_revoked(engine):
    key = keys.add(engine, "alice")
    check = keys.Keys(engine, ttl_s=60)
    assert check.sender(f"Bearer {key}") == "alice"
    assert status_of(lambda: check.sender(None)) == 401
    assert status_of(lambda: check.sender(f"Basic {key}")) == 401
    assert status_of(lambda: check.sender("Bearer lnk_forged")) == 401
    keys.revoke(engine, "alice")
    assert check.sender(f"Bearer {key}") == "alice"  # cached for predictions (ttl_s) ...
    assert status_of(lambda: check.sender(f"Bearer {key}", fresh=True)) == 403  # not feedback
    assert status_of(lambda: keys.Keys(engine).sender(f"Bearer {key}")) == 403
    assert [r["revoked"] is not None for r in keys.listing(engine)] == [True]


def asgi(app, path: str, authorization: str | None = None) -> int:
    """The status an ASGI app answers a POST to ``path`` with."""
    sent = []
    headers = [(b"authorization", authorization.encode())] if authorization else []
    scope = {"type": "http", "path": path, "headers": headers, "app": app.owner}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def test_keys_for_predictions_guards_the_prediction_endpoints_only(engine):
    key = keys.add(engine, "client")

    async def inner(scope, receive, send):  # the app behind: answers 200
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    svc = types.SimpleNamespace(keys=keys.Keys(engine), keys_for_predictions=True)
    guarded = KeyCheck(inner)
    guarded.owner = types.SimpleNamespace(state=types.SimpleNamespace(svc=svc))
    for path in ("/invocations", "/predict", "/v2/models/lenet5-mnist/infer"):
        assert asgi(guarded, path) == 401
        assert asgi(guarded, path, f"Bearer {key}") == 200
    for path in ("/v2/health/ready", "/metrics", "/v2/models/lenet5-mnist"):
        assert asgi(guarded, path) == 200
    svc.keys_for_predictions = False  # the default: predictions stay open
    assert asgi(guarded, "/invocations") == 200
