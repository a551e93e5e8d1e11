"""``python -m pipeline.retrain [--if-needed]`` (``make retrain``): close the loop.

Takes the labels sent up to now (``feedback.until`` in params.yaml is set to this
moment), retrains through DVC (``dvc repro``: feedback -> train -> evaluate -> register)
and lets register's gate decide on every slice. Prints the champion and the candidate per
slice, before and after, and leaves params.yaml and dvc.lock ready to commit. The scoring
service follows ``@champion`` as it always does.

``--if-needed`` retrains only when at least ``retrain.min_labels`` labels arrived since the
last cut-off, or ``retrain.min_labels_on_drift`` once the monitor found drift on the
champion (its ``monitor.drift_detected`` tag), and says which. A failure (the log
unreachable, training stopped mid-way) is one line and a non-zero exit; params.yaml and the
outputs DVC removed are put back, and the champion is unchanged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.core import predlog, tracking
from pipeline.core.cli import dvc_command, run
from pipeline.core.errors import PipelineError
from pipeline.core.layout import CHAMPION_FILE
from pipeline.core.params import PARAMS_FILE, Params, load_params, until_time
from pipeline.core.predlog import LogError

log = logging.getLogger(__name__)


def needed(params: Params) -> str | None:
    """Why a retrain is due (drift with some new labels, or enough new labels), or None."""
    name, alias = params.register.model_name, params.register.alias
    tracking.use_store()
    champion = tracking.alias_target(name, alias)
    drift = champion is not None and champion.tags.get("monitor.drift_detected") == "true"
    since = until_time(params.feedback.until) if params.feedback.until else None
    engine = predlog.open_engine(predlog.log_url(params.serve.log_url))
    try:
        new = predlog.count_labels(engine, since)
    finally:
        engine.dispose()
    after = f"since {params.feedback.until}" if since else "so far"
    why, why_not = due(params, new, drift)
    if why is None:
        log.info("no retrain needed: %s, %d new labels %s", why_not, new, after)
        return None
    return f"{why}: {new} new labels {after}"


def due(params: Params, new: int, drift: bool) -> tuple[str | None, str]:
    """(why a retrain is due, or None; why not). Drift alone is not enough: a retrain on
    the same labels trains the same model. It lowers the bar to
    ``retrain.min_labels_on_drift`` new labels."""
    least = params.retrain.min_labels
    if drift and new >= params.retrain.min_labels_on_drift:
        return "the monitor found drift on the champion", ""
    if new >= least:
        return f"retrain.min_labels is {least}", ""
    if drift:
        on_drift = params.retrain.min_labels_on_drift
        return None, (f"drift on the champion but under retrain.min_labels_on_drift "
                      f"({on_drift}): label more of its traffic")  # fmt: skip
    return None, f"no drift on the champion, under retrain.min_labels ({least})"


def set_until(text: str, until: str) -> str:
    """params.yaml with ``feedback.until`` replaced, every comment and blank line kept."""
    lines = text.splitlines(keepends=True)
    section = None
    for i, line in enumerate(lines):
        if line[:1].strip():  # a top-level key starts a section
            section = line.split(":", 1)[0]
            continue
        key = re.match(r"([ \t]+)until:([ \t]*)([^#\n]*?)([ \t]*#.*)?$", line.rstrip("\n"))
        if section == "feedback" and key:
            indent, gap, _, comment = key.groups()
            lines[i] = f"{indent}until:{gap or ' '}'{until}'{comment or ''}\n"
            return "".join(lines)
    raise PipelineError(f"{PARAMS_FILE}: no feedback.until key to set")


def small_outputs() -> dict[Path, bytes]:
    """The bytes of every file git tracks under data/ (metrics, plot data, champion.json:
    the outputs DVC does not cache, so ``dvc checkout`` cannot bring them back)."""
    listed = subprocess.run(["git", "ls-files", "-z", "data"], capture_output=True)
    names = listed.stdout.decode().split("\0") if listed.returncode == 0 else []
    return {Path(n): Path(n).read_bytes() for n in names if n and Path(n).is_file()}


def gate_lines(champion_json: Path) -> list[str]:
    """Register's verdict per slice, champion against candidate, from champion.json."""
    record = json.loads(champion_json.read_text()).get("gate") or {}
    lines = [f"gate: {record.get('decision')}: {record.get('reason')}"]
    for name, s in (record.get("slices") or {}).items():
        before, after = s.get("champion_accuracy"), s.get("candidate_accuracy")
        low, high = s["accuracy_diff_ci95_pts"]
        accs = (f"{100 * before:.2f} % -> {100 * after:.2f} %" if before is not None
                else "")  # fmt: skip
        lines.append(f"  {name:<11} {s['count']:>6} images  {accs}  "
                     f"{s['accuracy_diff_pts']:+.2f} pts [{low:+.2f}, {high:+.2f}]  "
                     f"p = {s['p_value']:.3g}  {s['status']}")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.retrain", description=__doc__)
    parser.add_argument("--if-needed", action="store_true",
                        help="only after retrain.min_labels new labels, or "
                             "retrain.min_labels_on_drift once drift was found")  # fmt: skip
    args = parser.parse_args(argv)
    params = load_params()
    try:
        why = needed(params) if args.if_needed else "asked"
    except LogError as e:
        raise PipelineError(f"cannot tell whether to retrain: {e}") from None
    if why is None:
        return
    until = datetime.datetime.now(datetime.UTC).isoformat()  # (a label a moment ago counts)
    old = PARAMS_FILE.read_text()
    PARAMS_FILE.write_text(set_until(old, until))
    log.info("retraining (%s) on the labels up to %s: dvc repro", why, until)
    # This environment's DVC, and its python for the stages' `python -m` (as make does).
    here = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{here}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = dvc_command()
    kept = small_outputs()
    proc = subprocess.run([dvc, "repro"], stdout=sys.stderr, env=env)  # DVC's progress
    if proc.returncode != 0:  # the champion never moved: register did not run
        PARAMS_FILE.write_text(old)
        # dvc repro removed the failed stage's outputs before running it: the cached ones
        # come back from the cache, the small ones git tracks from before.
        subprocess.run([dvc, "checkout", "--quiet"], stdout=sys.stderr, env=env)
        for path, data in kept.items():
            if not path.exists() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        raise PipelineError(f"dvc repro failed (exit {proc.returncode}); params.yaml and the "
                            "outputs are put back and the champion is unchanged")  # fmt: skip
    for line in gate_lines(CHAMPION_FILE):
        log.info("%s", line)
    log.info("ready to commit: git add params.yaml dvc.lock data && git commit -m "
             "'retrain on labels up to %s'", until)  # fmt: skip


if __name__ == "__main__":
    run(main)
