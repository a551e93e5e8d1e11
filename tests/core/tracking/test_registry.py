"""The model registry against a real SQLite store in tmp_path: versions made from runs,
aliases, version tags and descriptions."""

import types

import mlflow
import pytest

from pipeline.core import tracking
from pipeline.core.errors import TrackingError
from pipeline.core.tracking import registry

NAME = "lenet5-test"


def logged_model(experiment_id):
    """A run with an (empty) MLflow 3 LoggedModel: (run_id, ``models:/<id>``).

    MLflow 3.17 registers ``runs:/<id>/<path>`` only when a logged model sits at that
    path, so a plain text artifact will not do; an initialized LoggedModel costs no
    pyfunc saving and registers like a real one.
    """
    with tracking.active_run(experiment_id=experiment_id) as rid:
        model = mlflow.initialize_logged_model(name="model")
    return rid, f"models:/{model.model_id}"


def test_register_a_version_from_a_run(experiment_id):
    rid, uri = logged_model(experiment_id)
    version = tracking.register(uri, NAME, {"git.commit": "abc", "val_accuracy": "0.99"})
    assert str(version.version) == "1" and version.run_id == rid
    stored = tracking.model_version(NAME, "1")
    assert stored.tags == {"git.commit": "abc", "val_accuracy": "0.99"}
    assert stored.source == uri


def test_register_an_unknown_model_is_one_tracking_error(experiment_id):
    with pytest.raises(TrackingError, match=f"^cannot register models:/m-nope as {NAME}: "):
        tracking.register("models:/m-nope", NAME, {})


def test_versions_of_a_run_lowest_first(experiment_id):
    run_a, uri_a = logged_model(experiment_id)
    run_b, uri_b = logged_model(experiment_id)
    for uri in (uri_a, uri_b, uri_a):
        tracking.register(uri, NAME, {})
    assert [str(v.version) for v in tracking.versions_of_run(NAME, run_a)] == ["1", "3"]
    assert str(tracking.version_of_run(NAME, run_a).version) == "1"
    assert str(tracking.version_of_run(NAME, run_b).version) == "2"
    assert tracking.versions_of_run(NAME, "0" * 32) == []
    assert tracking.version_of_run(NAME, "0" * 32) is None


def test_versions_of_a_model_that_does_not_exist_yet(experiment_id):
    assert tracking.versions_of_run("never-registered", "0" * 32) == []
    assert tracking.version_of_run("never-registered", "0" * 32) is None
    assert tracking.model_versions("never-registered") == []
    assert tracking.model_version("never-registered", "1") is None


def test_versions_are_ints_in_this_mlflow(experiment_id):
    """MLflow 3.17's SQL store returns ``ModelVersion.version`` as an int (tags are str)."""
    rid, uri = logged_model(experiment_id)
    tracking.register(uri, NAME, {})
    assert tracking.version_of_run(NAME, rid).version == 1
    assert tracking.model_version(NAME, "1").version == 1


def test_versions_sort_as_numbers(monkeypatch):
    found = [types.SimpleNamespace(version=v) for v in ("10", "9", "2")]
    fake = types.SimpleNamespace(search_model_versions=lambda query: found)
    monkeypatch.setattr(registry, "client", lambda: fake)
    assert [v.version for v in registry.versions_of_run(NAME, "r")] == ["2", "9", "10"]
    assert registry.version_of_run(NAME, "r").version == "2"


def test_aliases(experiment_id):
    _, uri = logged_model(experiment_id)
    tracking.register(uri, NAME, {})
    tracking.register(uri, NAME, {})
    assert tracking.alias_target(NAME, "champion") is None
    tracking.set_alias(NAME, "champion", "1")
    assert str(tracking.alias_target(NAME, "champion").version) == "1"
    tracking.set_alias(NAME, "champion", "2")  # moves
    assert str(tracking.alias_target(NAME, "champion").version) == "2"
    assert tracking.alias_target("never-registered", "champion") is None


def test_an_alias_to_a_missing_version_is_one_tracking_error(experiment_id):
    _, uri = logged_model(experiment_id)
    tracking.register(uri, NAME, {})
    with pytest.raises(TrackingError, match=f"^cannot set {NAME}@champion: "):
        tracking.set_alias(NAME, "champion", "7")


def test_version_tags_and_description(experiment_id):
    _, uri = logged_model(experiment_id)
    tracking.register(uri, NAME, {"a": "1"})
    tracking.set_version_tags(NAME, "1", {"b": "2", "a": "3"})
    tracking.set_description(NAME, "1", "# Model card\n\nval_accuracy 0.99")
    version = tracking.model_version(NAME, "1")
    assert version.tags == {"a": "3", "b": "2"}
    assert version.description == "# Model card\n\nval_accuracy 0.99"


def test_tagging_or_describing_a_missing_version_is_one_tracking_error(experiment_id):
    with pytest.raises(TrackingError, match=f"^cannot tag {NAME} version 1: "):
        tracking.set_version_tags(NAME, "1", {"a": "1"})
    with pytest.raises(TrackingError, match=f"^cannot describe {NAME} version 1: "):
        tracking.set_description(NAME, "1", "text")


def test_model_versions_lists_every_version(experiment_id):
    run_a, uri_a = logged_model(experiment_id)
    run_b, uri_b = logged_model(experiment_id)
    tracking.register(uri_a, NAME, {})
    tracking.register(uri_b, NAME, {})
    tracking.register(uri_a, "other-model", {})
    versions = tracking.model_versions(NAME)
    assert sorted((str(v.version), v.run_id) for v in versions) == [("1", run_a), ("2", run_b)]


def test_store_facts_count_finished_runs_and_know_the_workspace_run(experiment_id):
    with tracking.active_run(experiment_id=experiment_id) as rid:
        pass
    facts = tracking.store_facts("exp", rid)
    assert facts.finished_runs == 1 and facts.workspace_run_known
    assert facts.store == "the local store mlflow.db"
    other = tracking.store_facts("exp", "0123456789abcdef0123456789abcdef")
    assert not other.workspace_run_known
    assert tracking.store_facts("no-such-experiment", None).finished_runs == 0


def test_why_no_champion_names_this_store_and_register(experiment_id):
    with tracking.active_run(experiment_id=experiment_id):
        pass
    line = tracking.why_no_champion(NAME, "champion", "exp")
    assert line.startswith(f"no {NAME}@champion in the local store mlflow.db, although it has 1")
    assert "python -m pipeline.register" in line
