"""``python -m pipeline.tune``: a hyperparameter search with Optuna, on validation accuracy.

The search is the ``tune:`` section of params.yaml. Every worker — ``--workers N``
processes here, and the same command on other machines — shares one Optuna study through
``OPTUNA_STORAGE`` (default: SQLite ``optuna.db`` beside ``mlflow.db`` in the main
workspace; SQLite serves one machine only, use a PostgreSQL URL across machines).

- ``tune.n_trials`` is the budget of the whole study: a worker creates a trial only under a
  lock held across machines (a PostgreSQL advisory lock; a file lock for SQLite) after
  counting every trial, running ones included, so concurrent workers never overshoot.
- A trial trains exactly as the train stage does (:func:`pipeline.core.training.prepare`:
  same data slice, seed and recipe, ``tune.epochs`` epochs), reports ``val_accuracy`` each
  epoch to the pruner, and is an MLflow run nested under the sweep's parent run. The test
  split is never read.
- Each running trial beats a heartbeat; a worker that dies (SIGKILL, lost machine) leaves
  a trial whose heartbeat stops, and another worker marks it failed in Optuna and MLflow;
  such a lost trial does not count against the budget, so the others still finish it.
- At the end: the best trial as a ready ``dvc exp run`` command, also in data/tune/best.yaml.

The package: :mod:`.storage` (the study's storage and the cross-machine lock),
:mod:`.study` (sampler, pruner, the trial's params, the summary: pure),
:mod:`.worker` (one process's trials, heartbeats, pruning) and :mod:`.__main__` (the
command, which spawns the workers).
"""
