"""Stage ``register``: the best finished run becomes ``@champion`` only on evidence.

- candidates: full pipeline runs only (FINISHED, evaluated, with a logged model), ranked by
  ``register.metric`` on validation (:mod:`pipeline.core.promotion`); with labelled
  production images in the workspace (the feedback stage), only the runs trained on that
  very feedback split compete: the champion is then gated against the best of them;
- the best one is registered as a version unless its run already has one. Several
  machines may register the same run at once: the lowest version of a run wins, any other
  is tagged ``duplicate_of`` and ignored everywhere (no timing guesses, EDIT permission is
  enough);
- gate: the candidate and the current champion are scored on the same images of every
  slice, MNIST's test split and the production slice (the feedback stage's holdout); on
  each, an exact McNemar test on the images where they disagree, and a one-sided bound of
  the loss. Promoted (significantly better on a slice, no worse than its margin on any:
  ``register.max_loss`` on test, ``register.production_max_loss`` on production; a slice
  under ``register.min_slice_images`` says so and does not block): ``@champion`` moves.
  Otherwise the candidate becomes ``@challenger`` and the champion stays. No champion yet:
  the first one is promoted without a test. The gate's numbers (each slice's too) are tags
  on the candidate's version, metrics of its run and ``gate`` in champion.json; a version
  already scored against the same champion on the same test images is not scored again,
  but its counts are decided anew under today's ``register.alpha`` and ``min_gain``;
- two machines moving the alias at once: after a move the alias is read back, and if
  another version took it, the two are gated against each other the same way;
- writes data/register/champion.json (the champion, the store, the ranking metric, the
  test metrics, the gate of the last attempt) and data/register/store.json, the receipt
  that makes DVC run register again wherever the store is not this one (a fresh clone,
  ``dvc pull``): :mod:`pipeline.core.receipt`;
- outputs made with another store (run.json names a run this store lacks) and nothing to
  register: one line saying to retrain here or to point at the store that has the run.
"""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING

import jinja2
import pandas as pd

from pipeline.core import card, tracking
from pipeline.core.cli import run
from pipeline.core.data import (
    atomic_write,
    file_md5,
    load_split,
    load_split_or_empty,
    split_md5,
    write_json,
)
from pipeline.core.errors import PipelineError, TrackingError
from pipeline.core.layout import CARD_FILE, CHAMPION_FILE, FEEDBACK_DIR, STORE_FILE, split_file
from pipeline.core.params import RegisterParams, load_params
from pipeline.core.promotion import (
    GATE_TAG_PREFIX,
    RANK_COLUMNS,
    Decision,
    candidate_filter,
    decide,
    decide_slices,
    gate_record,
    gate_tags,
    paired,
    rank_runs,
    reusable,
    slice_record,
)
from pipeline.core.receipt import foreign_outputs, receipt, workspace_run_id

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
SPLITS = ("train", "val", "test")
DUPLICATE_TAG = "duplicate_of"
LINEAGE_PARAMS = ("model.activation", "train.optimizer", "train.learning_rate", "train.epochs")


def lineage_tags(run: Run) -> dict[str, str]:
    """What trained this model, short enough for the registry page: run id, git commit
    and dirtiness, data hashes, DVC experiment and the few params a reviewer scans for
    (all params stay on the run)."""
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("git.", "data.", "dvc."))}
    params = {f"params.{k}": run.data.params[k] for k in LINEAGE_PARAMS if k in run.data.params}
    return {"run_id": run.info.run_id, **tags, **params}


def version_for(name: str, run_obj: Run) -> ModelVersion:
    """The run's version: the existing one, else a new one. Of several versions of one
    run (machines registering it at once), the lowest wins; the others are tagged
    ``duplicate_of`` so that nothing counts them."""
    run_id = run_obj.info.run_id
    found = tracking.versions_of_run(name, run_id)
    if not found:
        model_uri = run_obj.data.tags[tracking.MODEL_URI_TAG]
        created = tracking.register(model_uri, name, lineage_tags(run_obj))
        log.info("registered run %s as %s version %s", run_id, name, created.version)
        found = tracking.versions_of_run(name, run_id) or [created]
    winner, *others = found
    for other in others:  # (MLflow's SQL store gives versions as ints, tags as strings)
        if other.tags.get(DUPLICATE_TAG) != str(winner.version):
            tracking.set_version_tags(name, other.version, {DUPLICATE_TAG: str(winner.version)})
            log.info("%s version %s duplicates version %s", name, other.version, winner.version)
    return winner


def gate(name: str, candidate: ModelVersion, champion: ModelVersion | None, cfg: RegisterParams):
    """Test ``candidate`` against ``champion`` on every slice: MNIST's test split and the
    production slice (data/feedback/holdout.npz, when users labelled any): (Decision,
    gate record).

    An earlier gate of the same two versions on the same test images is not scored again
    on them: its counts are decided anew under today's policy. The production slice is
    always scored now, both models on the same images."""
    if champion is None:
        return decide(None, cfg.alpha, cfg.min_gain), gate_record(
            None, "test", 0, cfg.alpha, cfg.min_gain
        )
    against = str(champion.version)
    digest = split_md5("test")["test"]
    stored = candidate.tags.get(f"{GATE_TAG_PREFIX}record")
    result = reusable(json.loads(stored), against, digest) if stored else None
    if result is not None and result.both_right is not None:
        log.info("v%s vs v%s: the counts of their gate on these test images, decided anew",
                 candidate.version, against)  # fmt: skip
    else:
        x, y = load_split("test")

        def labels(version: ModelVersion):  # as evaluate logged them, else from the model
            logged = tracking.LoggedTest(version.run_id, y, digest)
            return tracking.predicted_labels(f"models:/{name}/{version.version}", x, logged)

        try:
            champion_pred = labels(champion)
        except TrackingError as e:
            log.warning("champion %s version %s cannot be scored: %s", name, against, e)
            reason = f"champion v{against} cannot be loaded: promoted without a test"
            return Decision("first", reason), gate_record(
                None, "test", len(y), cfg.alpha, cfg.min_gain, against=against
            )
        result = paired(y, champion_pred, labels(candidate))
    results = {"test": result}
    production = _production_slice()
    if production is not None:
        px, py = production
        results["production"] = paired(
            py,
            *(
                tracking.predicted_labels(f"models:/{name}/{v.version}", px)
                for v in (champion, candidate)
            ),  # fmt: skip
        )
    decision, verdicts = decide_slices(
        results, cfg.alpha, cfg.min_gain, margins(cfg), cfg.min_slice_images
    )
    record = gate_record(
        result, "test", result.n, cfg.alpha, cfg.min_gain, against=against, md5=digest
    )
    record["max_loss"] = cfg.max_loss
    record["production_max_loss"] = cfg.production_max_loss
    record["slices"] = {k: slice_record(r, verdicts[k]) for k, r in results.items()}
    return decision, record


def margins(cfg: RegisterParams) -> dict[str, float]:
    """Each slice's non-inferiority margin in points. The production slice has its own:
    a few hundred labelled images cannot bound a loss as tightly as 10,000 test images."""
    return {"test": cfg.max_loss, "production": cfg.production_max_loss}


def _feedback_md5() -> str | None:
    """The DVC hash of the workspace's feedback train split; None when it holds no image."""
    if len(load_split_or_empty("train", FEEDBACK_DIR)[1]) == 0:
        return None
    return file_md5(split_file("train", FEEDBACK_DIR))


def _production_slice():
    """The feedback stage's holdout (x, y), or None when it holds no image."""
    x, y = load_split_or_empty("holdout", FEEDBACK_DIR)
    return (x, y) if len(y) else None


def promote_or_keep(
    name: str, candidate: ModelVersion, champion: ModelVersion | None, cfg: RegisterParams
) -> tuple[ModelVersion, dict, str]:
    """Gate the candidate and move the aliases: the champion afterwards, the gate record,
    the one-line reason."""
    decision, record = gate(name, candidate, champion, cfg)
    record = {**record, "decision": decision.decision, "reason": decision.reason}
    tags = gate_tags(record)
    if any(candidate.tags.get(k) != v for k, v in tags.items()):  # new facts or policy
        tracking.set_version_tags(name, candidate.version, tags)
        tracking.log_metrics(slice_metrics(record), run_id=candidate.run_id)
    if decision.promote:
        tracking.set_alias(name, cfg.alias, candidate.version)
        challenger = tracking.alias_target(name, CHALLENGER)
        if challenger is not None and str(challenger.version) == str(candidate.version):
            tracking.delete_alias(name, CHALLENGER)  # it won: no longer a challenger
        return candidate, record, f"{name}@{cfg.alias} -> v{candidate.version}: {decision.reason}"
    tracking.set_alias(name, CHALLENGER, candidate.version)
    return (
        champion,
        record,
        (f"champion stays v{champion.version}: v{candidate.version} {decision.reason}"),
    )


def slice_metrics(record: dict) -> dict[str, float]:
    """Each slice's accuracies, difference and p-value as the candidate run's metrics
    (``gate.production.candidate_accuracy``, ...), beside what evaluate logged."""
    out = {}
    for name, facts in (record.get("slices") or {}).items():
        for key in ("champion_accuracy", "candidate_accuracy", "accuracy_diff_pts", "p_value"):
            if facts.get(key) is not None:
                out[f"gate.{name}.{key}"] = facts[key]
    return out


def main() -> None:
    params = load_params()
    cfg = params.register
    name = cfg.model_name
    experiment_id = tracking.connect(params.tracking.experiment)
    feedback_md5 = _feedback_md5()
    runs = tracking.search_runs(experiment_id, candidate_filter(feedback_md5), RANK_COLUMNS)
    ranked = rank_runs(runs, cfg.metric)
    foreign = foreign_outputs(tracking.store_facts(params.tracking.experiment, workspace_run_id()))
    if ranked.empty:
        raise PipelineError(
            f"no finished run with test metrics and a model to register in "
            f"{tracking.store_label()}: {foreign or '`make repro` trains one'}"
        )
    if foreign:  # the store's best run is registered; the workspace's model is not it
        log.warning("%s", foreign)
    best_run = tracking.get_run(ranked.iloc[0].run_id)
    candidate = version_for(name, best_run)
    champion = tracking.alias_target(name, cfg.alias)

    if champion is not None and str(champion.version) == str(candidate.version):
        record = _stored_record(champion)
        line = f"{name}@{cfg.alias} already is v{champion.version}, the best candidate"
    else:
        champion, record, line = promote_or_keep(name, candidate, champion, cfg)
        now = tracking.alias_target(name, cfg.alias)
        if now is not None and str(now.version) != str(champion.version):  # moved meanwhile
            log.info("%s@%s moved to v%s meanwhile: gating the two", name, cfg.alias, now.version)
            champion, record, line = promote_or_keep(name, champion, now, cfg)
    champion_run = tracking.get_run(champion.run_id)
    write_json(CHAMPION_FILE, champion_file(cfg, champion, champion_run, record))
    write_card(cfg, champion, champion_run, record)
    store = tracking.store_label()
    write_json(STORE_FILE, receipt(store, name, cfg.alias, champion.version, champion.run_id))
    log.info("%s", line)


def champion_file(cfg: RegisterParams, champion: ModelVersion, run_obj: Run, record: dict):
    """What data/register/champion.json holds."""
    metrics = run_obj.data.metrics if run_obj else {}
    return {
        "name": cfg.model_name,
        "alias": cfg.alias,
        "version": int(champion.version),
        "run_id": champion.run_id,
        "store": tracking.store_label(),  # the run id and version are this store's
        "ranked_by": cfg.metric,
        **{k: metrics.get(k) for k in ("val_accuracy", "val_loss", "test_accuracy", "test_loss")},
        "gate": json.loads(json.dumps(record, sort_keys=True)),  # as the tag stores it
    }


def write_card(cfg: RegisterParams, champion: ModelVersion, run_obj: Run, record: dict) -> None:
    """The champion's model card from its logged facts only: data/register/card.md, the
    run's ``card.md`` artifact and the version's description (the registry page; without
    its YAML front matter, shortened if it would pass MLflow's 5,000 characters)."""
    facts = card_facts(cfg, champion, run_obj, record)
    try:
        text = card.render(facts)
    except jinja2.UndefinedError as e:  # a run logged without a fact the card shows
        log.warning("model card of %s v%s: %s", cfg.model_name, champion.version, e)
        text = card.missing(facts, str(e))
    atomic_write(CARD_FILE, lambda tmp: tmp.write_text(text))
    shown = card.description(text)  # the registry keeps at most 5,000 characters
    if champion.description != shown:
        tracking.log_text(text, "card.md", run_id=champion.run_id)
        tracking.set_description(cfg.model_name, champion.version, shown)


def card_facts(
    cfg: RegisterParams, champion: ModelVersion, run_obj: Run, record: dict
) -> card.CardFacts:
    """What the card shows, read back from the champion's run: params, metrics, tags,
    dataset sizes and the evaluation artifacts that evaluate logged."""
    run_id, tags = run_obj.info.run_id, run_obj.data.tags
    per_class = tracking.read_text_artifact(run_obj, "evaluation/per_class.csv")
    predictions = tracking.read_text_artifact(run_obj, tracking.PREDICTIONS_ARTIFACT)
    pred = pd.read_csv(io.StringIO(predictions)) if predictions else None
    return card.CardFacts(
        name=cfg.model_name,
        version=str(champion.version),
        run_id=run_id,
        params=run_obj.data.params,
        metrics=run_obj.data.metrics,
        tags=tags,
        data_md5={s: tags[f"data.{s}.md5"] for s in SPLITS if f"data.{s}.md5" in tags},
        split_sizes=tracking.dataset_sizes(run_obj),
        per_class=card.per_class_rows(pd.read_csv(io.StringIO(per_class))) if per_class else (),
        confusions=card.top_confusions(pred.actual, pred.predicted) if pred is not None else (),
        robustness=card.robustness_of(run_obj.data.metrics),
        gate=record or None,
        alias=cfg.alias,
    )


def _stored_record(version: ModelVersion) -> dict:
    stored = version.tags.get(f"{GATE_TAG_PREFIX}record")
    return json.loads(stored) if stored else {}


if __name__ == "__main__":
    run(main)
