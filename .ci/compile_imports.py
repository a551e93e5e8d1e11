"""Byte-compile what the project's commands import (``make setup``, after the install).

uv installs without byte-compiling: all 16,000 installed files took 30 s of 2 cores, and
the commands import about a third of them. Python compiles a module when a process first
imports it and keeps the result, unless PYTHONDONTWRITEBYTECODE is set (as in many Docker
images and CI runners): then every command would compile what it imports again (the
three tracked stages' imports: 11.5 s a start against 4.4-5.3 s). So setup imports what
the commands import, with bytecode writes on, in two processes at once (TensorFlow's stack
and then every module of ``pipeline``; the tracking server, DVC and the rest): 5,330 files
in 13 s on 2 cores (BENCHMARKS.md, the suite). An import that fails fails setup, in one
line: the install is broken.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

EVERY_PIPELINE_MODULE = (
    "import importlib, pkgutil, pipeline\n"
    "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'):\n"
    "    importlib.import_module(m.name)\n"
)
NOTICE = re.compile(r"[IW]\d{4} |WARNING: All log messages before absl")
GROUPS = (
    "import keras\n" + EVERY_PIPELINE_MODULE,  # keras: TensorFlow, the largest share
    "import dvc.cli, dvc.repo, mlflow.cli, mlflow.server, optuna, uvicorn\n"
    "import mlflow.store.tracking.sqlalchemy_store, mlflow.store.model_registry.sqlalchemy_store\n",
)


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow's start-up notices
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for code in GROUPS
    ]
    errors = [(proc.communicate()[1], proc.returncode) for proc in procs]
    failed = [(err, code) for err, code in errors if code]
    if failed:  # the first failure's last line (both groups may hit the same package)
        err, code = failed[0]
        # (TensorFlow's start-up notices, absl's "I0000 …" lines and its warning, are not it)
        lines = [line for line in err.splitlines() if line.strip() and not NOTICE.match(line)]
        last = lines[-1] if lines else "no error message"
        sys.stderr.write(
            f"make setup: the installed packages do not import (exit {code}): {last}\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
