"""The served model follows ``name@alias``: polled every ``serve.poll_s`` (or woken by an
MLflow webhook), a new version is loaded and warmed in the background, then swapped in.

The swap is one reference assignment: a request takes the :class:`Loaded` model that is
current when it arrives and is answered by that one, so no request fails or mixes two
versions. A version that cannot be loaded, or a registry that does not answer, leaves the
current version serving, with one WARNING line and ``serve_model_reloads_total{result=
"failure"}``; the next poll tries again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import tracking
from pipeline.core.errors import PipelineError, first_line
from pipeline.serve import metrics

log = logging.getLogger(__name__)

WEBHOOK_SECRET_ENV = "SERVE_WEBHOOK_SECRET"
WEBHOOK_MAX_AGE_S = 300  # a signed delivery older than this is refused (replays)

Predict = Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) float32 0-255 -> (N, 10)


@dataclass(frozen=True)
class Loaded:
    """One registered version, ready to answer."""

    name: str
    version: str
    run_id: str
    engine: str  # "numpy" (the NumPy forward pass) or "keras" (a model it does not support)
    predict: Predict


def load_version(name: str, version: str, workdir: Path) -> Loaded:
    """Download, load and warm ``models:/name/version``: the NumPy forward pass, or Keras
    for what it does not implement (a bf16 model)."""
    uri = f"models:/{name}/{version}"
    found = tracking.model_version(name, version)
    if found is None:
        raise PipelineError(f"{uri}: no such version")
    dst = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=workdir))
    try:  # both engines read the whole model into memory: its files go right after
        engine, model = tracking.load_model_files(tracking.download_model(uri, dst), uri)
        # The batcher hands the NumPy pass whole batches (forward); pyfunc batches itself.
        predict = (model.forward if engine == "numpy"
                   else lambda x: np.asarray(model.predict(x), np.float32))  # fmt: skip
    finally:
        shutil.rmtree(dst, ignore_errors=True)
    probs = predict(np.zeros((2, 28, 28), np.float32))  # warm: the first call pays setup
    if probs.shape != (2, 10) or not np.isfinite(probs).all():
        raise PipelineError(f"{uri}: gives {probs.shape} outputs, not 10 probabilities")
    return Loaded(name, str(found.version), found.run_id, engine, predict)


class Champion:
    """The model behind ``name@alias`` now (:attr:`current`), kept up to date by a thread."""

    def __init__(self, name: str, alias: str, poll_s: float, workdir: Path) -> None:
        self.name, self.alias, self.poll_s, self.workdir = name, alias, poll_s, workdir
        self.current: Loaded | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failed: str | None = None  # the version that failed last (logged once)
        self._thread = threading.Thread(target=self._follow, name="champion", daemon=True)

    def start(self) -> Loaded:
        """Load the version the alias points at now (a one-line error if none), then
        follow it."""
        target = tracking.alias_target(self.name, self.alias)
        if target is None:
            raise PipelineError(  # python -m pipeline.serve said why before it came here
                f"no {self.name}@{self.alias} in {tracking.store_label()}: nothing to serve"
            )
        self._swap(load_version(self.name, str(target.version), self.workdir))
        self._thread.start()
        return self.current

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Check the alias now (a webhook said it moved)."""
        self._wake.set()

    def check(self) -> bool:
        """Follow the alias once: True if a new version was swapped in."""
        try:
            target = tracking.alias_target(self.name, self.alias)
        except Exception as e:  # a registry that does not answer: keep serving
            return self._failure(f"registry did not answer: {first_line(e)}", None)
        if target is None:
            return self._failure(f"{self.name}@{self.alias} not found in the registry", None)
        version = str(target.version)
        if self.current is not None and version == self.current.version:
            return False
        try:
            loaded = load_version(self.name, version, self.workdir)
        except Exception as e:  # any failure to load keeps the current version serving
            return self._failure(f"cannot load v{version}: {first_line(e)}", version)
        before = self.current.version if self.current else None
        self._swap(loaded)
        metrics.RELOADS.labels(result="success").inc()
        log.info("%s@%s moved: now serving v%s (was v%s)", self.name, self.alias, version, before)
        return True

    def _swap(self, loaded: Loaded) -> None:
        self.current = loaded  # one assignment: requests after it get the new version
        self._failed = None
        metrics.VERSION.set(int(loaded.version))

    def _failure(self, why: str, version: str | None) -> bool:
        metrics.RELOADS.labels(result="failure").inc()
        if version is None or version != self._failed:
            serving = self.current.version if self.current else "nothing"
            log.warning("%s; still serving v%s", why, serving)
        self._failed = version
        return False

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.check()


def verify_webhook(headers, body: bytes, secret: str, now: float | None = None) -> str | None:
    """Why an MLflow webhook delivery is refused, or None if its signature holds.

    MLflow (>= 3.3) signs ``<delivery id>.<timestamp>.<payload>`` with HMAC-SHA256 of the
    webhook's secret, sent as ``X-MLflow-Signature: v1,<base64>``."""
    if not secret:
        return f"no webhook secret configured ({WEBHOOK_SECRET_ENV})"
    signature = headers.get("x-mlflow-signature", "")
    delivery, stamp = headers.get("x-mlflow-delivery-id", ""), headers.get("x-mlflow-timestamp", "")
    if not (signature.startswith("v1,") and delivery and stamp.isdigit()):
        return "missing or malformed X-MLflow-Signature / Delivery-Id / Timestamp headers"
    if abs((now or time.time()) - int(stamp)) > WEBHOOK_MAX_AGE_S:
        return "timestamp too old or in the future"
    signed = f"{delivery}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest())
    if not hmac.compare_digest(expected.decode(), signature[3:]):
        return "bad signature"
    return None
