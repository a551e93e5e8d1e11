"""``python -m pipeline.lineage``: what trained the champion?

Prints the registered version, its run, the git commit (and whether the tree was dirty),
the DVC experiment, the content hashes of the data, the params and the metrics. ``--json``
for machines; ``--version N`` for another version than the alias's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from pipeline.core import tracking
from pipeline.core.cli import run
from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion


def lineage(version: ModelVersion, run_obj: Run) -> dict:
    """The facts a reviewer needs to reproduce a registered model."""
    tags = run_obj.data.tags
    return {
        "model": f"{version.name} version {version.version}",
        "aliases": list(version.aliases),
        "run_id": run_obj.info.run_id,
        "run_name": run_obj.info.run_name,
        "git_commit": tags.get("git.commit"),
        "git_dirty": tags.get("git.dirty"),
        "dvc_experiment": tags.get("dvc.exp_name"),
        "data": {k.removeprefix("data."): v for k, v in tags.items() if k.startswith("data.")},
        "params": dict(sorted(run_obj.data.params.items())),
        "metrics": {
            k: run_obj.data.metrics[k]
            for k in ("test_accuracy", "test_loss", "best_val_accuracy")
            if k in run_obj.data.metrics
        },
    }


def render(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.lineage", description=__doc__)
    parser.add_argument("--version", help="a version number instead of the alias")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    params = load_params()
    name, alias = params.register.model_name, params.register.alias
    tracking.use_store()  # reads only: creates no experiment
    version = (
        tracking.model_version(name, args.version)
        if args.version
        else tracking.alias_target(name, alias)
    )
    if version is None:
        raise PipelineError(f"no {name}@{alias} yet (run the register stage)")
    run_obj = tracking.get_run(version.run_id)
    if run_obj is None:
        raise PipelineError(
            f"{name} version {version.version}: its run {version.run_id} "
            f"is gone from the tracking store"
        )
    info = lineage(version, run_obj)
    sys.stdout.write(json.dumps(info, indent=2) + "\n" if args.json else render(info))


if __name__ == "__main__":
    run(main)
