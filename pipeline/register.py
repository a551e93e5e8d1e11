"""Stage ``register``: make the best finished run the ``@champion`` of the registered model.

- candidates: full pipeline runs only (FINISHED, evaluated, with a logged model), so sweep
  trials, which have neither, never compete;
- best run = highest ``register.metric`` of the final model (default ``val_accuracy``), then
  the lower matching loss (``val_loss``), then newer. Chosen on validation, the test split
  stays an unbiased estimate of the champion: picking the best of many runs *on the test
  set* would make its test accuracy optimistic. The test metrics are reported, not used;
- registers its model as a new version only if that run has none yet (idempotent);
- moves the alias only when the best version is strictly better than the current champion;
- with several machines at once: another copy's just-finished run is left to that copy's
  own register stage, and the alias is re-checked after a move (see ``pick``, ``settle_alias``);
- writes data/register/champion.json (name, version, run id, the ranking metric and the
  test metrics).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pandas as pd

from pipeline.core import tracking
from pipeline.core.cli import run
from pipeline.core.data import write_json
from pipeline.core.errors import PipelineError
from pipeline.core.layout import CHAMPION_FILE, RUN_FILE
from pipeline.core.params import load_params

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)


def loss_of(metric: str) -> str:
    """The tie-breaking loss of an accuracy metric: val_accuracy -> val_loss."""
    return metric.replace("accuracy", "loss")


def rank_runs(runs: pd.DataFrame, metric: str = "val_accuracy") -> pd.DataFrame:
    """Candidates best first: with a logged model; ``metric`` desc, its loss asc, newest."""
    ok = runs[runs[f"tags.{tracking.MODEL_URI_TAG}"].notna()]
    keys = [f"metrics.{metric}", f"metrics.{loss_of(metric)}"]
    ok = ok.assign(**{k: ok[k] if k in ok else float("nan") for k in keys})
    return ok.sort_values(
        [*keys, "start_time"],
        ascending=[False, True, False],
        na_position="last",
        kind="stable",
    )


def score(metrics: dict[str, float], metric: str = "val_accuracy") -> tuple[float, float]:
    """Comparable key: higher is better (``metric`` first, then the lower matching loss)."""
    loss = metrics.get(loss_of(metric))
    return (metrics.get(metric, -1.0), -loss if loss is not None else float("-inf"))


def lineage_tags(run: Run) -> dict[str, str]:
    """What trained this model: run id, git commit, data hashes, params (as JSON)."""
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("git.", "data.", "dvc."))}
    return {
        "run_id": run.info.run_id,
        **tags,
        "params": json.dumps(run.data.params, sort_keys=True),
    }


def main() -> None:
    params = load_params()
    name, alias, metric = params.register.model_name, params.register.alias, params.register.metric
    experiment_id = tracking.connect(params.tracking.experiment)
    ranked = rank_runs(tracking.finished_runs(experiment_id), metric)
    if ranked.empty:
        raise PipelineError("no finished run with test metrics and a model to register")
    best, version = pick(ranked, name, own_run_id())
    run_obj = tracking.get_run(best.run_id)

    if version is None:
        version = tracking.register(
            best[f"tags.{tracking.MODEL_URI_TAG}"], name, lineage_tags(run_obj)
        )
        log.info("registered run %s as %s version %s", best.run_id, name, version.version)
    else:
        log.info("run %s is already %s version %s", best.run_id, name, version.version)

    current = tracking.alias_target(name, alias)
    current_run = tracking.get_run(current.run_id) if current else None
    best_score = score(run_obj.data.metrics, metric)
    if current is not None and current.version == version.version:
        log.info("%s@%s already is version %s", name, alias, version.version)
    elif current_run is None or best_score > score(current_run.data.metrics, metric):
        tracking.set_alias(name, alias, version.version)
        log.info(
            "%s@%s -> version %s (%s %.4f; test_accuracy %.4f, reported, not used)",
            name,
            alias,
            version.version,
            metric,
            best_score[0],
            run_obj.data.metrics.get("test_accuracy", float("nan")),
        )
        version, run_obj = settle_alias(name, alias, version, run_obj, metric)
    else:
        log.info(
            "%s@%s stays at version %s: it is at least as good as version %s",
            name,
            alias,
            current.version,
            version.version,
        )
        version, run_obj = current, current_run
    write_json(
        CHAMPION_FILE,
        {
            "name": name,
            "alias": alias,
            "version": int(version.version),
            "run_id": version.run_id,
            "ranked_by": metric,
            "val_accuracy": run_obj.data.metrics.get("val_accuracy"),
            "val_loss": run_obj.data.metrics.get("val_loss"),
            "test_accuracy": run_obj.data.metrics.get("test_accuracy"),
            "test_loss": run_obj.data.metrics.get("test_loss"),
        },
    )


# --- Several machines registering at once (team server) -----------------------------------

# A finished run of another working copy that has no version yet is left to that copy's own
# register stage for this long, so two machines never register the same run twice.
SETTLE_S = 120


def own_run_id() -> str | None:
    """The run this working copy trained, if any."""
    try:
        return json.loads(RUN_FILE.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pick(ranked: pd.DataFrame, name: str, own: str | None) -> tuple[pd.Series, ModelVersion | None]:
    """The best candidate this process may register, and its version if it has one.

    Skipped: another copy's run that finished less than SETTLE_S ago and has no version
    (its own register stage is registering it right now), unless every candidate is one.
    """
    now = pd.Timestamp.now(tz="UTC")
    for _, candidate in ranked.iterrows():
        version = tracking.version_of_run(name, candidate.run_id)
        end = pd.Timestamp(candidate.end_time)
        end = end.tz_localize("UTC") if end.tzinfo is None else end
        fresh = pd.isna(end) or (now - end).total_seconds() < SETTLE_S
        if version is not None or candidate.run_id == own or not fresh:
            return candidate, version
        log.info("run %s is left to its own register stage (finished just now)", candidate.run_id)
    # Every candidate is another copy's fresh run (a register run by hand, no run of its
    # own): register the best after all.
    return ranked.iloc[0], None


def settle_alias(
    name: str, alias: str, version: ModelVersion, run_obj: Run, metric: str
) -> tuple[ModelVersion, Run]:
    """After moving the alias, point it at the best version in the registry.

    Two machines may move it at the same moment, each from what it read before the other
    wrote; whoever wrote last corrects it here, so the champion ends up the better one.
    """
    best = (score(run_obj.data.metrics, metric), version, run_obj)
    for other in tracking.model_versions(name):
        other_run = tracking.get_run(other.run_id)
        if other_run is not None and score(other_run.data.metrics, metric) > best[0]:
            best = (score(other_run.data.metrics, metric), other, other_run)
    current = tracking.alias_target(name, alias)
    if current is None or current.version != best[1].version:
        tracking.set_alias(name, alias, best[1].version)
        log.info("%s@%s -> version %s (a better version appeared meanwhile)", name, alias,
                 best[1].version)  # fmt: skip
    return best[1], best[2]


if __name__ == "__main__":
    run(main)
