"""``python -m pipeline.serve [--host H] [--port N] [--workers N]`` (``make serve``), and
``python -m pipeline.serve keys add NAME | list | revoke NAME`` (feedback keys).

Serves ``models:/<register.model_name>@<register.alias>`` from the configured MLflow store
(local SQLite, or the team server with the usual ``MLFLOW_TRACKING_*`` variables) with
uvicorn, following the alias; settings in params.yaml's ``serve:`` section. No champion,
an unreadable params.yaml or an unreachable prediction log: one line, exit 1. SIGTERM or
Ctrl-C: the requests in flight are answered, the log is flushed, exit 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from pipeline.core import tracking
from pipeline.core.cli import run
from pipeline.core.errors import PipelineError, redact
from pipeline.core.layout import SERVE_SPOOL, project_root
from pipeline.core.params import ServeParams, load_params

log = logging.getLogger("pipeline.serve")
SETTINGS_ENV = "PIPELINE_SERVE_SETTINGS"  # what each worker process builds its service from


def build_service(settings: dict):
    """The :class:`~pipeline.serve.app.Service` of one process: the champion loaded, the
    log opened, a batcher."""
    from pipeline.serve.app import Service
    from pipeline.serve.batcher import Batcher
    from pipeline.serve.champion import Champion
    from pipeline.serve.keys import Keys
    from pipeline.serve.log import PredictionLog, Spool, open_engine

    tracking.use_store()
    cfg = settings["serve"]
    champion = Champion(settings["name"], settings["alias"], cfg["poll_s"], Path(settings["tmp"]))
    champion.start()
    engine = open_engine(settings["log_url"])
    return Service(
        champion=champion,
        log=PredictionLog(engine, cfg["log_flush_ms"] / 1000, Spool(Path(settings["spool"]))),
        batcher=Batcher(
            cfg["max_batch"], cfg["max_wait_ms"], cfg["max_queue"], cfg["max_queue_ms"]
        ),
        max_body=int(cfg["max_body_mb"] * 2**20),
        log_pixels=cfg["log_pixels"],
        keys=Keys(engine),
        keys_for_predictions=cfg["keys_for_predictions"],
    )


def worker_app():
    """The app of one of ``--workers N`` processes (uvicorn's factory)."""
    from pipeline.core.cli import setup_logging
    from pipeline.serve.app import BodyLimit, create_app

    setup_logging()
    settings = json.loads(os.environ[SETTINGS_ENV])
    max_body = int(settings["serve"]["max_body_mb"] * 2**20)
    return BodyLimit(create_app(lambda: build_service(settings)), max_body)


def draining_server(config, drain_s: float):
    """uvicorn's server, whose SIGTERM first drains for ``drain_s``: readiness answers 503
    (:data:`~pipeline.serve.app.DRAINING`) while requests are still answered, so a load
    balancer's health check takes the replica out before it stops accepting; then
    uvicorn's graceful stop (no new connections, the requests in flight answered)."""
    import threading

    import uvicorn

    from pipeline.serve.app import DRAINING

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            if sig != signal.SIGTERM or drain_s <= 0 or DRAINING.is_set():
                return super().handle_exit(sig, frame)
            DRAINING.set()
            log.info("SIGTERM: not ready any more; stopping in %g s (serve.drain_s)", drain_s)
            threading.Timer(drain_s, super().handle_exit, (sig, frame)).start()

    return _Server(config)


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:  # python -m pipeline.serve keys add|list|revoke
        from pipeline.serve import keys
        from pipeline.serve.log import log_url, open_engine

        engine = open_engine(log_url(params.serve.log_url))
        try:
            return keys.main(argv[1:], engine)
        finally:
            engine.dispose()
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve", description=__doc__)
    parser.add_argument("--host", default=params.serve.host)
    parser.add_argument("--port", type=int, default=params.serve.port)
    parser.add_argument("--workers", type=int, default=params.serve.workers)
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise PipelineError(f"--workers must be >= 1, got {args.workers}")
    cfg: ServeParams = params.serve
    name, alias = params.register.model_name, params.register.alias

    from pipeline.serve.log import log_url, open_engine

    tracking.use_store()
    url = log_url(cfg.log_url)
    open_engine(url).dispose()  # the log is reachable and has its tables, before serving
    if tracking.alias_target(name, alias) is None:
        raise PipelineError(
            f"nothing to serve: {tracking.why_no_champion(name, alias, params.tracking.experiment)}"
        )
    tmp = tempfile.mkdtemp(prefix="pipeline-serve-")
    spool = Path(cfg.spool_dir) if cfg.spool_dir else project_root() / SERVE_SPOOL
    settings = {"serve": cfg.__dict__, "name": name, "alias": alias, "log_url": url, "tmp": tmp,
                "spool": str(spool.resolve())}  # fmt: skip
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    built = None
    if args.workers > 1:  # each worker process builds its own service (worker_app)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=tmp, prefix="metrics-")
        app: object = "pipeline.serve.__main__:worker_app"
    else:  # built here, so that a model that cannot be loaded is one line and exit 1
        from pipeline.serve.app import BodyLimit, create_app

        built = [build_service(settings)]
        app = BodyLimit(create_app(built.pop), int(cfg.max_body_mb * 2**20))
    log.info("serving models:/%s@%s at http://%s:%d (%d worker%s; prediction log %s)",
             name, alias, args.host, args.port, args.workers, "s" * (args.workers > 1),
             redact(url))  # fmt: skip
    # uvicorn answers SIGTERM/SIGINT by draining, then raises the signal again once its own
    # handlers are gone: ignored here, so a graceful stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    import uvicorn

    kwargs = dict(host=args.host, port=args.port, log_config=None, access_log=False,
                  timeout_graceful_shutdown=30, lifespan="on")  # fmt: skip
    try:
        if args.workers > 1:  # uvicorn's supervisor: SIGTERM stops each worker at once
            uvicorn.run(app, factory=True, workers=args.workers, **kwargs)
        else:
            draining_server(uvicorn.Config(app, **kwargs), cfg.drain_s).run()
    finally:
        if built:  # uvicorn never started it (a busy port): stop its threads
            svc = built.pop()
            svc.champion.stop()
            svc.log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run(main)
