"""``python -m pipeline.monitor`` (``make monitor``): drift and accuracy of the served model,
read from the prediction log; ``python -m pipeline.monitor export --out DIR``: the images
users labelled through ``POST /feedback``, as a prepared split.

    python -m pipeline.monitor [--last N | --since ISO-TIME] [--version V] [--window K]
                               [--out monitor/] [--fail-on-drift] [--push URL]

Writes ``report.json`` and ``report.html`` to ``--out``, logs a run to the MLflow experiment
``<tracking.experiment>-monitoring`` and tags the model version with the last status. An
empty window, an unknown version or a log that cannot be reached: one line, exit 1.
``--fail-on-drift``: exit 3 when drift is detected or the estimated accuracy is more than
``monitor.max_drop`` points below the validation accuracy (for cron or CI). ``--push URL``:
the verdict goes to that Prometheus Pushgateway as gauges (:mod:`pipeline.monitor.push`),
where the shipped alert rules read it.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core import monitoring, tracking
from pipeline.core.cli import run
from pipeline.core.data import atomic_write
from pipeline.core.errors import PipelineError
from pipeline.core.inference import NumpyModel, UnsupportedModel
from pipeline.core.params import Params, load_params
from pipeline.core.predlog import latest_version, log_url, open_engine, read_window
from pipeline.monitor import push, report
from pipeline.monitor.assess import assess

log = logging.getLogger("pipeline.monitor")
ALERT_EXIT = 3
REFERENCE = "monitoring/reference.npz"


def parse(argv: list[str] | None, params: Params) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.monitor", description=__doc__)
    parser.add_argument("command", nargs="?", choices=("report", "export"), default="report")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, help=f"the last N images ({params.monitor.last})")
    which.add_argument("--since", help="images logged since this ISO time (UTC if no zone)")
    parser.add_argument("--version", help="one model version (default: the latest logged)")
    parser.add_argument("--window", type=int, default=params.monitor.window)
    parser.add_argument("--out", type=Path, default=Path("monitor"))
    parser.add_argument("--fail-on-drift", action="store_true")
    parser.add_argument("--push", metavar="URL", help="a Prometheus Pushgateway for the verdict")
    args = parser.parse_args(argv)
    if args.since is not None:
        try:
            since = datetime.datetime.fromisoformat(args.since)
        except ValueError:
            raise PipelineError(f"--since {args.since!r}: not an ISO time") from None
        args.since = since if since.tzinfo else since.replace(tzinfo=datetime.UTC)
    if args.last is None and args.since is None:
        args.last = params.monitor.last
    if (args.last is not None and args.last < 1) or (args.window is not None and args.window < 10):
        raise PipelineError("--last must be >= 1 and --window >= 10")
    return args


def load_reference(name: str, version: str, tmp: Path) -> tuple[dict, str]:
    """(reference arrays, run id) of a registered version."""
    found = tracking.model_version(name, version)
    if found is None:
        raise PipelineError(
            f"{name} has no version {version!r} in {tracking.store_label()}: the log was "
            "written by a service of another store (MLFLOW_TRACKING_URI, PREDICTION_LOG_URL)"
        )
    path = tracking.download_artifact(found.run_id, REFERENCE, tmp)
    if path is None:
        raise PipelineError(f"{name} v{version} has no {REFERENCE} (evaluated before "
                            "monitoring existed: dvc repro -f evaluate)")  # fmt: skip
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}, found.run_id


def embedding_of(name: str, version: str, pixels: np.ndarray, tmp: Path) -> np.ndarray | None:
    """The version's F6 embedding of the logged images (NumPy forward pass; None for a
    model it does not support)."""
    folder = tracking.download_model(f"models:/{name}/{version}", tmp / "model")
    try:
        return NumpyModel.load(folder / "data" / "model.keras").embed(pixels)
    except UnsupportedModel:
        return None


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    args = parse(argv, params)
    engine = open_engine(log_url(params.serve.log_url))
    if args.command == "export":
        return export(engine, args.out)
    version = args.version or latest_version(engine)  # --last N: N images of that version
    rows = read_window(engine, args.last, args.since, version) if version else {"digit": []}
    if len(rows["digit"]) == 0:
        which = f"version {args.version}" if args.version else "any version"
        raise PipelineError(f"no logged predictions of {which} in the window")
    name = params.register.model_name
    tracking.use_store()
    with tempfile.TemporaryDirectory() as tmp:
        ref, run_id = load_reference(name, version, Path(tmp))
        pixels = rows["pixels"]
        embedding = embedding_of(name, version, pixels, Path(tmp)) if pixels is not None else None
    probs = rows["probabilities"]
    cur = monitoring.profile(pixels if pixels is not None else np.zeros((0, 28, 28), np.uint8),
                             probs, embedding)  # fmt: skip
    if pixels is None:  # pixel logging off: the predictions and confidences only
        cur = {k: v for k, v in cur.items() if not k.startswith("feature.")}
    cfg = params.monitor
    result = assess(ref, cur, cfg, rows["label"])
    steps = []
    for i, w in enumerate(monitoring.windows(len(probs), args.window)):
        part = {k: v[w] for k, v in cur.items()}
        step = assess(ref, part, cfg, rows["label"][w], intervals=False)
        steps.append({
            "window": i, "images": w.stop - w.start, "drift_share": step["drift"]["share"],
            "drift_detected": step["drift"]["detected"],
            "estimated_accuracy": step["accuracy"]["estimated"],
            "labeled_accuracy": step["accuracy"]["labeled"],
        })  # fmt: skip
    out = {
        "model_name": name, "model_version": version, "run_id": run_id,
        "images": int(len(probs)),
        "window": {"first": str(rows["ts"][0]), "last": str(rows["ts"][-1])},
        **result,
    }  # fmt: skip
    columns = {
        k.removeprefix("feature."): (ref[k], cur[k]) for k in cur if k.startswith("feature.")
    }
    columns["confidence"] = (ref["confidence"], cur["confidence"])
    columns["predicted_digit"] = (ref["digit"], cur["digit"])
    views = {"columns": columns, "pixels": pixels, "reference_images": ref.get("images"),
             "confidence": cur["confidence"], "digit": cur["digit"]}  # fmt: skip
    html = report.write(args.out, out, steps, views)
    log_run(params, out, steps, html)
    alert = _alert(out, cfg.max_drop)
    if args.push:
        push.push(args.push, out, cfg.max_drop)
        log.info("verdict pushed to %s (job %s, model %s)", args.push, push.JOB, name)
    log.info("%s v%s, %d images: %s; report %s", name, version, out["images"],
             alert or "no drift, accuracy as on validation", html)  # fmt: skip
    if alert and args.fail_on_drift:
        log.error("%s", alert)
        sys.exit(ALERT_EXIT)


def _alert(out: dict, max_drop: float) -> str | None:
    acc = out["accuracy"]
    drop = 100 * (acc["reference"] - acc["estimated"])
    problems = []
    if out["drift"]["detected"]:
        problems.append(f"drift detected ({100 * out['drift']['share']:.0f} % of the columns)")
    if drop > max_drop:
        problems.append(f"estimated accuracy {100 * acc['estimated']:.1f} %, {drop:.1f} points "
                        f"below validation (> monitor.max_drop {max_drop:g})")  # fmt: skip
    return "; ".join(problems) or None


def log_run(params: Params, out: dict, steps: list[dict], html: Path) -> None:
    """One MLflow run per call in ``<experiment>-monitoring``; the version's last status."""
    acc = out["accuracy"]
    experiment = tracking.connect(f"{params.tracking.experiment}-monitoring")
    tags = {"model.name": out["model_name"], "model.version": out["model_version"]}
    name = f"v{out['model_version']} {out['window']['last'][:19]}"
    with tracking.active_run(experiment_id=experiment, run_name=name, tags=tags):
        metrics = {"monitor/drift_share": out["drift"]["share"],
                   "monitor/estimated_accuracy": acc["estimated"],
                   "monitor/images": out["images"]}  # fmt: skip
        if acc["labeled"] is not None:
            metrics["monitor/labeled_accuracy"] = acc["labeled"]
        tracking.log_metrics(metrics)
        for step in steps:
            tracking.log_metrics({"monitor/window_drift_share": step["drift_share"],
                                  "monitor/window_estimated_accuracy": step["estimated_accuracy"]},
                                 step=step["window"])  # fmt: skip
        tracking.log_artifact(html)
        tracking.log_artifact(html.with_name("report.json"))
    tracking.set_version_tags(out["model_name"], out["model_version"], {
        "monitor.drift_detected": str(out["drift"]["detected"]).lower(),
        "monitor.drift_share": f"{out['drift']['share']:.3f}",
        "monitor.estimated_accuracy": f"{acc['estimated']:.4f}",
        "monitor.images": str(out["images"]),
        "monitor.window_last": out["window"]["last"],
    })  # fmt: skip


def export(engine, out: Path) -> None:
    """The labelled feedback images as ``out/feedback.npz`` (x uint8 N×28×28, y), the
    prepared splits' format."""
    rows = read_window(engine)
    known = rows["label"] >= 0
    if not known.any():
        raise PipelineError("no feedback labels in the prediction log yet (POST /feedback)")
    if rows["pixels"] is None:
        raise PipelineError("the log holds no pixels (serve.log_pixels: false): nothing to export")
    x, y = rows["pixels"][known], rows["label"][known].astype(np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "feedback.npz"
    atomic_write(path, lambda t: np.savez_compressed(t, x=x, y=y), suffix=".npz")
    log.info("%d labelled images -> %s (x uint8 %s, y)", len(y), path, "x".join(map(str, x.shape)))


if __name__ == "__main__":
    run(main)
