"""``python -m pipeline.report [--base REV] [--out DIR]``: the workspace against a base
revision (default ``main``) as one Markdown report, for review in CI.

Built on DVC's own diffs, not a re-implementation: ``dvc params diff``, ``dvc metrics
diff --all`` and ``dvc plots diff -o`` (the learning curves and confusion matrix of both
revisions, from the DVC cache). Then register's promotion test between the base
revision's model and the workspace's (both scored on the test split, exact McNemar), and
the current ``@champion`` with what register would decide for the workspace's run.

Writes ``DIR/report.md``, ``DIR/report.json`` (the same figures, from the same dict) and
``DIR/plots/*.png`` (linked from the Markdown); ``--out -`` prints the Markdown to stdout
and writes nothing (no images). A base with no metrics (no such revision, or a commit
before any ``dvc repro``) is one line, also written as the report, and exit 0. What else
is missing (a model not in the store, a plot not in the cache) is one line in its section.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import subprocess
import sys
import urllib.parse
from pathlib import Path

from pipeline.core import tracking
from pipeline.core.cli import dvc_command, run
from pipeline.core.data import load_split, read_run, split_md5
from pipeline.core.errors import PipelineError, first_line, redact
from pipeline.core.layout import CONFUSION_FILE, CURVES_FILE, RUN_FILE, split_file
from pipeline.core.params import Params, load_params
from pipeline.core.promotion import (
    CANDIDATE_FILTER,
    RANK_COLUMNS,
    decide,
    gate_record,
    paired,
    rank_runs,
)

log = logging.getLogger(__name__)

PLOTS = (CURVES_FILE.as_posix(), CONFUSION_FILE.as_posix())
# Results first, in the order a reviewer reads them; anything else DVC reports follows.
FIRST = ("test_accuracy", "test_accuracy_ci95_low", "test_accuracy_ci95_high", "test_loss",
         "val_accuracy", "val_loss", "train_seconds")  # fmt: skip
PLOT_REVS = ("base", "workspace")


# ------------------------------------------------------------- DVC's JSON -> rows -> Markdown


def params_rows(diff: dict) -> list[dict]:
    """``dvc params diff --json``: one row per changed param (file, param, old, new)."""
    return [
        {"file": file, "param": name, "old": change.get("old"), "new": change.get("new")}
        for file, params in diff.items()
        for name, change in params.items()
    ]


def metrics_rows(diff: dict) -> list[dict]:
    """``dvc metrics diff --json --all``: one row per metric (file, metric, old, new,
    diff), results in :data:`FIRST` order, then the rest (``robust.*``) by name."""
    rows = [
        {"file": file, "metric": name, **{k: change.get(k) for k in ("old", "new", "diff")}}
        for file, metrics in diff.items()
        for name, change in metrics.items()
    ]
    rank = {name: i for i, name in enumerate(FIRST)}
    return sorted(rows, key=lambda r: (rank.get(r["metric"], len(FIRST)), r["metric"]))


def has_base(rows: list[dict]) -> bool:
    """Whether the base revision had any metric at all."""
    return any(row["old"] is not None for row in rows)


def plot_links(shown: dict, base: str, out: Path) -> list[dict]:
    """``dvc plots diff --json -o OUT``: per plot, the base's and the workspace's image
    relative to the report (``None`` where DVC had none, e.g. not in the cache)."""
    rows = []
    for plot in PLOTS:
        images = {rev: None for rev in (base, "workspace")}
        for item in shown.get("data", {}).get(plot, []):
            for rev in item.get("revisions", []):
                images[rev] = Path(item["url"]).relative_to(out).as_posix()
        rows.append({"plot": plot, "base": images[base], "workspace": images["workspace"]})
    return rows


def value(v: object, fmt: str = "") -> str:
    """A figure as DVC gave it (shortest repr; a change as ``+0.1844``), ``—`` for none."""
    return "—" if v is None else format(v, fmt) if fmt else str(v)


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def section(title: str, headers: list[str], rows: list[list], empty: str = "none") -> str:
    return f"\n## {title}\n\n" + (table(headers, rows) if rows else f"{empty}\n")


def render(report: dict) -> str:
    """The Markdown of a report dict (what :func:`build` returns)."""
    base, metrics = report["base"], report["metrics"]
    revs = [f"`{base}`", "workspace"]
    out = [f"# Pipeline report: workspace vs `{base}`\n"]
    params = [[f"`{p['param']}`", value(p["old"]), value(p["new"])] for p in report["params"]]
    out.append(section("Params that changed", ["param", *revs], params))
    for title, robust in (("Metrics", False), ("Robustness: accuracy on perturbed images", True)):
        rows = [[f"`{m['metric']}`", value(m["old"]), value(m["new"]), value(m["diff"], "+.4g")]
                for m in metrics if m["metric"].startswith("robust.") == robust]  # fmt: skip
        out.append(section(title, ["metric", *revs, "change"], rows))
    p = report["paired"]
    out.append(section(f"Test accuracy: paired test against `{base}`'s model",
                       ["", "value"], [] if "missing" in p else paired_rows(p, base),
                       p.get("missing", "")))  # fmt: skip
    out.append(f"\n{p['reason']}\n" if "reason" in p else "")
    out.append(f"\n## Champion\n\n{champion_md(report['champion'])}")
    plots = [[f"`{p['plot']}`", *(f"![{k}]({p[k]})" if p[k] else "—" for k in PLOT_REVS)]
             for p in report["plots"]]  # fmt: skip
    out.append(section("Plots", ["plot", *revs], plots, "not written (`--out -`)"))
    return "".join(out)


def paired_rows(p: dict, base: str) -> list[list]:
    low, high = p["ci95_pts"]
    return [
        ["test images", p["images"]],
        [f"right only with `{base}`'s model", p["base_only"]],
        ["right only with the workspace's model", p["workspace_only"]],
        ["accuracy change (points)", f"{p['accuracy_diff_pts']:+.2f}"],
        ["95 % interval (points)", f"{low:+.2f} … {high:+.2f}"],
        ["p (exact McNemar)", f"{p['p_value']:.3g}"],
        [f"significant at α = {p['alpha']:g}", "yes" if p["significant"] else "no"],
    ]


def champion_md(c: dict) -> str:
    if "missing" in c:
        return c["missing"] + "\n"
    now = (f"`{c['name']}@{c['alias']}` is version {c['version']} (run `{c['run_id']}`, "
           f"test accuracy {value(c['test_accuracy'])})." if c["version"]
           else f"no `{c['name']}@{c['alias']}` yet.")  # fmt: skip
    lines = [
        now,
        f"register would decide for this run (`{c['run']}`): **{c['decision']}**: {c['reason']}",
    ]
    if c.get("run_url"):
        lines.append(f"MLflow run: <{c['run_url']}>")
    return "\n\n".join(lines) + "\n"


# ----------------------------------------------------------------------- I/O at the edges


def dvc_json(*args: str) -> subprocess.Popen:
    """Start ``dvc ARGS --json`` (the three diffs run side by side)."""
    return subprocess.Popen(
        [dvc_command(), *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise PipelineError(f"dvc {' '.join(proc.args[1:3])}: {first_line(err or out)}")
    return json.loads(out or "{}")


def git_show(rev: str, path: Path) -> str | None:
    proc = subprocess.run(
        ["git", "show", f"{rev}:{path.as_posix()}"], capture_output=True, text=True
    )
    return proc.stdout if proc.returncode == 0 else None


def rev_exists(rev: str) -> bool:
    cmd = ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"]
    return subprocess.run(cmd, capture_output=True).returncode == 0


class Scorer:
    """Predicted test labels per model URI, each model scored once: from the predictions
    its run logged at evaluation when they are of this test split, else by loading it."""

    def __init__(self) -> None:
        self._seen: dict[str, object] = {}

    @functools.cached_property
    def split(self) -> tuple:  # (x, y, the split's DVC hash)
        return (*load_split("test"), split_md5("test")["test"])

    @property
    def y(self):
        return self.split[1]

    def __call__(self, uri: str, run_id: str | None = None):
        if uri not in self._seen:
            x, y, digest = self.split
            logged = tracking.LoggedTest(run_id, y, digest) if run_id else None
            self._seen[uri] = tracking.predicted_labels(uri, x, logged)
        return self._seen[uri]


def paired_against_base(
    base: str, base_run: str | None, run_id: str, params: Params, score: Scorer
) -> dict:
    """The paired test of the workspace's model against the base revision's model."""
    cfg = params.register
    if base_run is None:
        return {"missing": f"no {RUN_FILE} at {base}: no base model to test against"}
    if base_run == run_id:
        return {"missing": f"the workspace's run is {base}'s run ({run_id}): nothing retrained"}
    runs = {"base": base_run, "workspace": run_id}
    uris = {who: tracking.logged_model_uri(rid) for who, rid in runs.items()}
    for who, uri in uris.items():
        if uri is None:
            rid = runs[who]
            return {
                "missing": f"no {who} model: run {rid} is not in the store "
                f"{_store()} (or has no logged model): no paired test"
            }
    res = paired(score.y, score(uris["base"], base_run), score(uris["workspace"], run_id))
    decision = decide(res, cfg.alpha, cfg.min_gain)
    record = gate_record(res, "test", len(score.y), cfg.alpha, cfg.min_gain, against=base_run)
    # fmt: off
    return {"base_run": base_run, "run": run_id, "images": len(score.y),
            "base_only": res.champion_only, "workspace_only": res.candidate_only,
            "accuracy_diff_pts": record["accuracy_diff_pts"],
            "ci95_pts": record["accuracy_diff_ci95_pts"], "p_value": record["p_value"],
            "alpha": cfg.alpha, "significant": decision.promote, "reason": decision.reason}
    # fmt: on


def champion_outlook(run_id: str, params: Params, score: Scorer) -> dict:
    """The current champion and what register would decide for ``run_id``."""
    cfg = params.register
    run_obj = tracking.get_run(run_id)
    if run_obj is None:
        return {"missing": f"run {run_id} is not in the store {_store()}: no champion outlook"}
    champion = tracking.alias_target(cfg.model_name, cfg.alias)
    champion_run = tracking.get_run(champion.run_id) if champion else None
    # fmt: off
    fact = {"name": cfg.model_name, "alias": cfg.alias, "run": run_id,
            "run_url": run_url(tracking.tracking_uri(), run_obj.info.experiment_id, run_id),
            "version": str(champion.version) if champion else None,
            "run_id": champion.run_id if champion else None,
            "test_accuracy": champion_run.data.metrics.get("test_accuracy")
            if champion_run else None}
    # fmt: on
    runs = tracking.search_runs(run_obj.info.experiment_id, CANDIDATE_FILTER, RANK_COLUMNS)
    ranked = rank_runs(runs, cfg.metric)
    best = ranked.iloc[0].run_id if not ranked.empty else None
    if best != run_id:
        why = f"not the best candidate on {cfg.metric} (register gates run {best})"
        return fact | {"decision": "kept", "reason": why}
    if champion is None:
        return fact | {"decision": "promoted", "reason": "no champion yet: promoted without a test"}
    if champion.run_id == run_id:
        return fact | {"decision": "already champion", "reason": "this run's model is it"}
    registered = f"models:/{cfg.model_name}/{champion.version}"
    champion_labels = score(
        tracking.logged_model_uri(champion.run_id) or registered, champion.run_id
    )
    res = paired(score.y, champion_labels, score(run_obj.data.tags[tracking.MODEL_URI_TAG], run_id))
    decision = decide(res, cfg.alpha, cfg.min_gain)
    word = "promoted" if decision.promote else "challenger"
    return fact | {"decision": word, "reason": f"vs v{champion.version}: {decision.reason}"}


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when the store is a server (no credentials)."""
    if not tracking.is_server(uri):
        return None
    parts = urllib.parse.urlsplit(uri)
    root = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")
    return f"{root}/#/experiments/{experiment_id}/runs/{run_id}"


def _store() -> str:
    return redact(tracking.tracking_uri()).split("?")[0]


def build(base: str, out: Path | None) -> dict | str:
    """The report dict, or the one line that says why there is nothing to compare."""
    if not rev_exists(base):
        return f"no revision {base}: a new repository? nothing to compare"
    procs = [dvc_json("params", "diff", base), dvc_json("metrics", "diff", "--all", base)]
    if out is not None:
        plots_dir = str((out / "plots").resolve())
        procs.append(dvc_json("plots", "diff", base, "-o", plots_dir, "--targets", *PLOTS))
    params, score = load_params(), Scorer()
    tracking.use_store()
    run_id = read_run()["run_id"] if RUN_FILE.exists() else None
    if run_id and (uri := tracking.logged_model_uri(run_id)) and split_file("test").exists():
        score(uri, run_id)  # needed in any case: scored while the DVC diffs run
    params_diff, metrics_diff, *plots = (result(p) for p in procs)
    metrics = metrics_rows(metrics_diff)
    if not has_base(metrics):
        return f"no metrics at {base}: a new repository? nothing to compare"
    shown = git_show(base, RUN_FILE)
    base_run = json.loads(shown).get("run_id") if shown else None
    if run_id:
        paired_test = paired_against_base(base, base_run, run_id, params, score)
        champion = champion_outlook(run_id, params, score)
    else:
        paired_test = champion = {"missing": f"no {RUN_FILE} in the workspace (dvc repro)"}
    return {
        "base": base,
        "params": params_rows(params_diff),
        "metrics": metrics,
        "paired": paired_test,
        "champion": champion,
        "plots": plot_links(plots[0], base, out.resolve()) if plots else [],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__)
    parser.add_argument("--base", default="main", help="git revision to compare with")
    parser.add_argument("--out", default="report", help="directory, or - for stdout")
    args = parser.parse_args(argv)
    out = None if args.out == "-" else Path(args.out)
    report = build(args.base, out)
    text = report + "\n" if isinstance(report, str) else render(report)
    if isinstance(report, str):
        log.info("%s", report)
    if out is None:
        sys.stdout.write(text)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    if not isinstance(report, str):
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("report: %s", out / "report.md")


if __name__ == "__main__":
    run(main)
