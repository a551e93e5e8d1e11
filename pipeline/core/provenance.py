"""Where a run comes from, as tags: the git commit and whether the code differed from it,
the DVC experiment, the run's name. Plain git and environment reads, no MLflow."""

from __future__ import annotations

import datetime
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

# Not "dirty": params are logged one by one (``dvc exp run -S`` changes exactly
# params.yaml and dvc.lock), and data/ is DVC's: a stage's git-tracked outputs are deleted
# by DVC before it runs, and the data's content hashes are tags of their own.
_NOT_CODE = (":!dvc.lock", ":!params.yaml", ":!data")


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """``git.commit``, and ``git.dirty``: whether code or config differs from that commit
    (a tracked file changed, or a new file under pipeline/)."""
    try:
        commit = _git("rev-parse", "HEAD", cwd=cwd)
        changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE,
                       cwd=cwd)  # fmt: skip
        new_code = _git("status", "--porcelain", "--untracked-files=all", "--", "pipeline",
                        cwd=cwd)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown"}
    return {"git.commit": commit, "git.dirty": str(bool(changed or new_code)).lower()}


def dvc_tags(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The DVC experiment this run belongs to, when ``dvc exp run`` started it."""
    tags = {}
    if env.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = env["DVC_EXP_NAME"]
    if env.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = env["DVC_EXP_BASELINE_REV"]
    return tags


def run_name(env: Mapping[str, str] = os.environ) -> str:
    """The DVC experiment's name, else ``workspace-<UTC time>``.

    Named here, not by MLflow: its random names come from Python's ``random``, which the
    train stage seeds, so every workspace run would get the same "random" name.
    """
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return env.get("DVC_EXP_NAME") or f"workspace-{stamp}"
