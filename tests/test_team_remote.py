"""A team on two machines: a bare git remote and a DVC remote shared by two clones.

Clone A reproduces, commits and pushes (git and `dvc push`); clone B, a `git clone` of the
bare remote (no data, no cache, no MLflow store), pulls and gets the same workspace.
Experiments travel with `dvc exp push` / `dvc exp pull`.
"""

import http.server
import json
import shutil
import threading
from functools import partial

import pytest

from pipeline.core.data import file_md5
from pipeline.testing.project import clone_of, free_port, run, stage_env

pytestmark = pytest.mark.slow

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
SAMPLED = ("data/train/model.keras", "data/prepared/test.npz", "data/eval/confusion.png")


def error_lines(proc) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln]


def assert_transfer_failed(proc, summary: str, cause: str) -> None:
    """DVC's failed transfer: non-zero exit, one line per file naming the cause, then one
    summary line."""
    assert proc.returncode != 0
    errors = error_lines(proc)
    assert errors and errors[-1].startswith(f"ERROR: {summary}"), proc.stderr
    assert all(cause in e for e in errors[:-1]), proc.stderr


@pytest.fixture(scope="module")
def team(smoke_project, tmp_path_factory):
    """Machine A pushed its reproduced workspace and one experiment; B is a fresh clone."""
    root = tmp_path_factory.mktemp("team")
    origin, remote = root / "origin.git", root / "dvc-remote"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root)

    a = clone_of(smoke_project, root / "a")
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], a)
    run(["git", "add", "-A"], a)  # dvc.lock, .dvc/config, metrics and plot data
    run([*GIT, "commit", "-qm", "reproduced on A"], a)
    run(["git", "remote", "add", "origin", str(origin)], a)
    run(["git", "push", "-q", "origin", "main"], a)
    run(["dvc", "push"], a)
    committed = {p: file_md5(a / p) for p in SAMPLED}  # before the experiment changes them
    run(["dvc", "exp", "run", "-n", "from-a", "-S", "train.epochs=1"], a, stage_env())
    run(["dvc", "exp", "push", "origin", "from-a"], a)

    b = root / "b"
    run(["git", "clone", "-q", str(origin), str(b)], root)
    return {"a": a, "b": b, "origin": origin, "remote": remote, "committed": committed}


def test_dvc_push_uploads_data_model_and_outputs(team):
    objects = [p for p in (team["remote"] / "files" / "md5").rglob("*") if p.is_file()]
    model_md5 = team["committed"]["data/train/model.keras"]
    assert model_md5 in run(["git", "show", "main:dvc.lock"], team["a"]).stdout
    assert any(p.parent.name + p.name == model_md5 for p in objects)  # files/md5/ab/cdef…
    assert len(objects) >= 10  # 4 raw files + dir manifest, 3 splits, model, PNG plots


def test_a_machine_without_internet_gets_mnist_from_the_remote(team, tmp_path):
    c = tmp_path / "c"
    run(["git", "clone", "-q", str(team["origin"]), str(c)], tmp_path)
    offline = stage_env(MNIST_MIRROR=str(tmp_path / "no-such-mirror"))
    run(["dvc", "pull", "data/raw"], c, offline)
    for f in (team["a"] / "data/raw").iterdir():
        assert file_md5(c / "data/raw" / f.name) == file_md5(f)
    assert not (c / "data/prepared/train.npz").exists()  # only what was asked for


def test_second_machine_pulls_the_same_workspace(team):
    b = team["b"]
    assert not (b / "data/train/model.keras").exists()
    run(["dvc", "pull"], b)
    assert json.loads(run(["dvc", "status", "--json"], b).stdout) == {}
    for path, md5 in team["committed"].items():
        assert file_md5(b / path) == md5, path  # byte-identical to what A committed
    out = run(["dvc", "repro"], b).stdout
    assert "Running stage" not in out and "up to date" in out


def test_experiment_pushed_from_a_shows_in_b_with_its_metrics(team):
    a, b = team["a"], team["b"]
    run(["dvc", "exp", "pull", "origin", "from-a"], b)
    rows = json.loads(run(["dvc", "exp", "show", "--json"], b).stdout)
    exps = {e["name"]: e["revs"][0] for row in rows for e in row.get("experiments") or []}
    assert "from-a" in exps
    metrics = exps["from-a"]["data"]["metrics"]["data/eval/metrics.json"]["data"]
    a_rows = json.loads(run(["dvc", "exp", "show", "--json"], a).stdout)
    a_exp = next(e["revs"][0] for r in a_rows for e in r.get("experiments") or [])
    assert metrics == a_exp["data"]["metrics"]["data/eval/metrics.json"]["data"]
    # Its model came along in the DVC remote: B can apply it without training.
    run(["dvc", "exp", "apply", "from-a"], b)
    lock = run(["git", "show", "refs/exps/" + _exp_ref(b, "from-a") + ":dvc.lock"], b).stdout
    assert file_md5(b / "data/train/model.keras") in lock


def _exp_ref(project, name: str) -> str:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], project).stdout
    return next(r for r in refs.split() if r.endswith("/" + name)).removeprefix("refs/exps/")


# --- what bad input gets ------------------------------------------------------------------


def test_push_without_a_remote_fails_with_one_line(smoke_project):
    proc = run(["dvc", "push"], smoke_project, check=False)
    assert proc.returncode != 0
    errors = error_lines(proc)
    assert len(errors) == 1 and "remote" in errors[0], proc.stderr


class ReadOnlyRemote(http.server.SimpleHTTPRequestHandler):
    """A DVC http remote that serves what it has and refuses every upload (403)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self._drain()  # answer after the upload, as a real server does (no broken pipes)
        self.send_error(403, "read-only remote")

    def _drain(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                self.rfile.read(size + 2)  # the chunk and its CRLF
            self.rfile.readline()  # the CRLF after the last, empty chunk
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_PUT = do_POST

    def log_message(self, *args: object) -> None:
        pass


def test_push_to_an_unreachable_or_read_only_remote_fails_with_one_line(team, tmp_path):
    a = clone_of(team["a"], tmp_path / "a")
    down = f"http://127.0.0.1:{free_port()}/dvc"
    run(["dvc", "remote", "add", "-f", "-d", "down", down], a)
    proc = run(["dvc", "push"], a, check=False)
    assert_transfer_failed(proc, "failed to push data to the cloud", "Cannot connect to host")

    served = tmp_path / "served"
    served.mkdir()
    port = free_port()
    handler = partial(ReadOnlyRemote, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run(["dvc", "remote", "add", "-f", "-d", "ro", f"http://127.0.0.1:{port}/"], a)
        proc = run(["dvc", "push"], a, check=False)
    finally:
        server.shutdown()
    assert_transfer_failed(proc, "failed to push data to the cloud", "403")
    assert not any(served.iterdir())  # nothing was written


def test_pull_of_a_hash_the_remote_lacks_fails_and_keeps_the_rest(team, tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(team["remote"], remote)
    model_md5 = team["committed"]["data/train/model.keras"]
    (remote / "files/md5" / model_md5[:2] / model_md5[2:]).unlink()
    c = tmp_path / "c"
    run(["git", "clone", "-q", str(team["origin"]), str(c)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], c)
    proc = run(["dvc", "pull"], c, check=False)
    assert proc.returncode != 0
    errors = error_lines(proc)
    assert len(errors) == 1 and errors[0].startswith("ERROR: failed to pull data"), proc.stderr
    assert f"Missing cache files:\nmd5: {model_md5}" in proc.stderr  # which hash…
    assert "targets:\ndata/train/model.keras\n" in proc.stderr  # …and which output
    assert not (c / "data/train/model.keras").exists()  # no half-written model
    assert file_md5(c / "data/prepared/test.npz") == team["committed"]["data/prepared/test.npz"]
