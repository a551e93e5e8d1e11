"""The whole loop through the real service and stores (issue 35; BENCHMARKS.md).

    python -m benchmarks.loop                       # ~25 min on 2 cores
    python -m benchmarks.loop --labels 100 300 1000 --no-poison

1. In a temporary copy of the project a champion is trained on MNIST with
   benchmarks/recipes.yaml's ``fast`` recipe (``dvc repro``) and served by
   ``python -m pipeline.serve`` (``serve.poll_s`` 1).
2. Shifted traffic goes to the service, a third each, in requests of 10: test digits
   rotated by ±40° (either way), inverted (dark on light), and with heavy strokes (a 4×4 grey
   dilation).
3. N of them are labelled through ``POST /feedback`` with a key, for each N of
   ``--labels``; each N starts from a copy of the same champion.
4. ``python -m pipeline.retrain`` runs (``make retrain``'s command), timed until the
   service answers with the new version.

Printed per N: accuracy on 2,000 fresh shifted images nobody labelled, before and after
(per shift, and the share of what the shift cost that came back); MNIST test accuracy
before and after (register's test slice); the gate's decision; the seconds from the
command to the service answering with the new version.

Then a poisoning run: at the largest N an honest sender labels the traffic and a second
sender labels as many other images with 30 % of its labels flipped; retrain; the second
key is revoked; retrain again. Printed: what each retrain made of the fresh images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from benchmarks.serve import announce
from pipeline.core import robustness
from pipeline.testing.project import (
    ROOT,
    copy_project,
    feedback_key,
    run,
    scoring_service,
    send_label,
    set_params,
)


def rotated(x: np.ndarray, seed: int) -> np.ndarray:
    return robustness.rotate(x, robustness.rng_for(seed, "loop-rotate"), 40)


def heavy(x: np.ndarray, seed: int) -> np.ndarray:
    return ndimage.grey_dilation(x, size=(1, 4, 4), mode="constant", cval=0)


def inverted(x: np.ndarray, seed: int) -> np.ndarray:
    return 255 - x


# Rotations and inversion each cost the fast champion 20 points or more; heavy strokes
# cost less (9 points) and show a milder shift in the same traffic.
SHIFTS = {"rotate_40deg": rotated, "inverted": inverted, "heavy_strokes": heavy}


def champion(base: Path, env: dict[str, str], overrides: list[str]) -> Path:
    project = copy_project(base / "champion")
    recipe = yaml.safe_load((ROOT / "benchmarks/recipes.yaml").read_text())["fast"]
    extra = dict(o.split("=", 1) for o in overrides)  # --set train.feedback_repeat=30
    set_params(project, serve__poll_s=1, serve__drain_s=0,
               **{k.replace(".", "__"): yaml.safe_load(str(v))
                  for k, v in {**recipe, **extra}.items()})  # fmt: skip
    run(["git", "commit", "-qam", "fast recipe"], project)
    run(["dvc", "repro"], project, env, timeout=1800)
    return project


def ask(url: str, x: np.ndarray) -> tuple[list[str], str, np.ndarray]:
    """Requests of 10 images: (request ids, the last answer's version, digits)."""
    import urllib.request

    ids, digits, version = [], [], ""
    for i in range(0, len(x), 10):
        body = json.dumps({"inputs": x[i : i + 10].tolist()}).encode()
        req = urllib.request.Request(f"{url}/invocations", body,
                                     {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as resp:
            ids.append(resp.headers["X-Request-Id"])
            version = resp.headers["X-Model-Version"]
            digits.append(np.argmax(json.loads(resp.read())["predictions"], axis=1))
    return ids, version, np.concatenate(digits)


def label(url: str, key: str, ids: list[str], y: np.ndarray, flip: float = 0.0) -> None:
    """Each image's label (a share ``flip`` of them wrong, seeded) with ``key``."""
    rng = np.random.default_rng(1)
    for k, digit in enumerate(y):
        if rng.random() < flip:
            digit = (digit + rng.integers(1, 10)) % 10
        status, out = send_label(url, key, ids[k // 10], int(digit), k % 10)
        assert status == 200, out


def accuracies(url: str, fresh: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    return {name: float((ask(url, x)[2] == y).mean()) for name, (x, y) in fresh.items()}


def retrain(project: Path, env: dict, url: str, old: str) -> tuple[float, str, dict]:
    """(seconds to the service answering a new version, or -1 if none; the version; the
    gate record)."""
    start = time.perf_counter()
    proc = run([sys.executable, "-m", "pipeline.retrain"], project, env, timeout=1800)
    gate = json.loads((project / "data/register/champion.json").read_text())["gate"]
    version = old
    if gate.get("decision") == "promoted":
        probe = np.zeros((1, 28, 28), np.uint8)
        while (version := ask(url, probe)[1]) == old:
            time.sleep(0.2)
    seconds = time.perf_counter() - start if version != old else -1.0
    print("\n".join("    " + line for line in proc.stderr.splitlines() if "gate" in line
                    or "images  " in line), flush=True)  # fmt: skip
    return seconds, version, gate


def ask_and_label(url: str, project: Path, env, sender: str, x: np.ndarray, y: np.ndarray,
                  seed: int, flip: float = 0.0) -> str:  # fmt: skip
    """Shifted traffic from ``x`` answered, then labelled by ``sender`` with a new key;
    the version that answered."""
    ids, version, _ = ask(url, traffic(x, seed=seed))
    label(url, feedback_key(project, sender, env), ids, y, flip=flip)
    return version


def traffic(x: np.ndarray, seed: int) -> np.ndarray:
    """Each shift in turn: image i gets shift i mod 3."""
    out = x.copy()
    for k, shift in enumerate(SHIFTS.values()):
        out[k :: len(SHIFTS)] = shift(x[k :: len(SHIFTS)], seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--no-poison", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml override for every run (train.feedback_repeat=30)",
    )
    args = parser.parse_args()
    env = announce("loop")
    if args.set:
        print(f"# params overrides: {' '.join(args.set)}")
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        base = champion(Path(tmp), env, args.set)
        with np.load(base / "data/prepared/test.npz", allow_pickle=False) as z:
            order = np.random.default_rng(0).permutation(len(z["y"]))
            x, y = z["x"][order], z["y"][order]
        # Labelled traffic from the first 5,000 test digits; fresh ones from the last 2,000.
        fresh = {name: (shift(x[8000:], 7), y[8000:]) for name, shift in SHIFTS.items()}
        fresh["clean"] = (x[8000:], y[8000:])
        rows = []
        for n in args.labels:
            project = Path(tmp) / f"n{n}"
            shutil.copytree(base, project, symlinks=True)
            server = scoring_service(project, env)
            with server:
                before = accuracies(server.url, fresh)
                v1 = ask_and_label(server.url, project, env, "labeller", x[:n], y[:n], seed=n)
                print(f"  N={n}: retraining", flush=True)
                seconds, v2, gate = retrain(project, env, server.url, v1)
                after = accuracies(server.url, fresh)
            rows.append((n, before, after, gate, seconds))
            shutil.rmtree(project, ignore_errors=True)
        report(rows)
        if not args.no_poison:
            poison(Path(tmp), base, env, x, y, fresh, max(args.labels))


def report(rows) -> None:
    print("\n| labels | shift | before | after | recovered | MNIST test before → after | gate "
          "| command → new version |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, before, after, gate, seconds in rows:
        test = (gate.get("slices") or {}).get("test", {})
        mnist = (f"{100 * test['champion_accuracy']:.2f} → {100 * test['candidate_accuracy']:.2f} %"
                 if "candidate_accuracy" in test else "n/a")  # fmt: skip
        took = f"{seconds:.0f} s" if seconds >= 0 else "not promoted"
        for name in SHIFTS:
            cost = before["clean"] - before[name]
            back = (after[name] - before[name]) / cost if cost > 0 else float("nan")
            print(f"| {n} | {name} (costs {100 * cost:.1f} pts) | {100 * before[name]:.1f} % | "
                  f"{100 * after[name]:.1f} % | {100 * back:.0f} % | {mnist} | "
                  f"{gate.get('decision')} | {took} |")  # fmt: skip


def poison(tmp: Path, base: Path, env, x, y, fresh, n: int) -> None:
    project = tmp / "poison"
    shutil.copytree(base, project, symlinks=True)
    server = scoring_service(project, env)
    with server:
        before = accuracies(server.url, fresh)
        v1 = ask_and_label(server.url, project, env, "honest", x[:n], y[:n], seed=n)
        ask_and_label(server.url, project, env, "mallory", x[n : 2 * n], y[n : 2 * n],
                      seed=n + 1, flip=0.3)  # fmt: skip
        _, v2, poisoned_gate = retrain(project, env, server.url, v1)
        poisoned = accuracies(server.url, fresh)
        run([sys.executable, "-m", "pipeline.serve", "keys", "revoke", "mallory"], project, env)
        _, v3, clean_gate = retrain(project, env, server.url, v2)
        cleaned = accuracies(server.url, fresh)
        summary = json.loads((project / "data/feedback/summary.json").read_text())
    print(f"\npoisoning: {n} honest labels + {n} from a sender flipping 30 %, then revoked")
    print("| | served | " + " | ".join(fresh) + " | gate |")
    print("| --- | --- |" + " --- |" * len(fresh) + " --- |")
    for name, acc, version, gate in (("before", before, v1, {}),
                                     ("with the poisoned labels", poisoned, v2, poisoned_gate),
                                     ("after revoking", cleaned, v3, clean_gate)):  # fmt: skip
        cells = " | ".join(f"{100 * acc[k]:.1f} %" for k in fresh)
        print(f"| {name} | v{version} | {cells} | {gate.get('decision', '')} |")
    print(f"feedback summary after revoking: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
