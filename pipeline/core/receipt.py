"""Which MLflow store this workspace's champion lives in, and what to say when a store has
none.

register writes ``data/register/store.json`` (:data:`~pipeline.core.layout.STORE_FILE`):
the store, the version and the run of the champion it left there. The file is a DVC
output of register that neither git nor the DVC cache keeps, so a fresh clone, a
``dvc pull`` or a copy has none and the next ``dvc repro`` runs register for the store at
hand, while a workspace in sync skips it at no cost (docs/pipeline.md: "Register and the
store"). Pure: the facts about the store come from :mod:`pipeline.core.tracking`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.layout import CHAMPION_FILE, RUN_FILE, STORE_FILE


@dataclass(frozen=True)
class StoreFacts:
    """What a store holds that explains a missing champion."""

    store: str  # tracking.store_label()
    finished_runs: int  # candidates register could rank
    workspace_run: str | None  # data/train/run.json's run id, if the workspace has one
    workspace_run_known: bool  # that run is in this store


def receipt(store: str, name: str, alias: str, version: str, run_id: str) -> dict:
    """What data/register/store.json holds."""
    return {"store": store, "model": f"{name}@{alias}", "version": int(version), "run_id": run_id}


def read_json(path: Path) -> dict | None:
    """A small JSON file of the workspace, None if missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def workspace_run_id(root: Path = Path()) -> str | None:
    """The run that trained this workspace's model (data/train/run.json), if any."""
    data = read_json(root / RUN_FILE)
    return str(data["run_id"]) if data and data.get("run_id") else None


def foreign_outputs(facts: StoreFacts) -> str | None:
    """The one-line advice when the workspace's outputs were made in another store (a
    `dvc pull`, a copy, a switched MLFLOW_TRACKING_URI); None if they were not."""
    if facts.workspace_run is None or facts.workspace_run_known:
        return None
    return (
        f"data/train/run.json names run {facts.workspace_run}, which {facts.store} does not "
        "have: this workspace's outputs were made with another store (dvc pull, a copy). "
        "Retrain here with `dvc repro -f train`, or set MLFLOW_TRACKING_URI to the store "
        "that has the run (the team server)"
    )


def no_champion(name: str, alias: str, facts: StoreFacts, root: Path = Path()) -> str:
    """Why ``name@alias`` is not in the store, and the command that fixes it: one line.

    Never "run make repro" to a workspace that already ran it: a store with runs needs
    register, a workspace whose run the store lacks needs training here (or its store)."""
    missing = f"no {name}@{alias} in {facts.store}"
    foreign = foreign_outputs(facts)
    if foreign:
        return f"{missing}: {foreign}"
    if facts.finished_runs:
        made = read_json(root / STORE_FILE) or read_json(root / CHAMPION_FILE) or {}
        elsewhere = made.get("store")
        where = f" (data/register/ describes {elsewhere})" if elsewhere else ""
        return (
            f"{missing}, although it has {facts.finished_runs} finished run(s){where}: "
            "register has not run against this store: `python -m pipeline.register`"
        )
    return f"{missing}: it has no runs yet: `make repro` trains and registers one"
