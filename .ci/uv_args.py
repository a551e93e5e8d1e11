"""pip's configuration as uv arguments: uv does not read pip.conf or PIP_* variables, so
the indexes, find-links and constraints a machine set up for pip are passed on.

    uv pip install $(python .ci/uv_args.py) -e '.[dev]'      (the Makefile's setup)
"""

import shlex
import subprocess
import sys

FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def main() -> None:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True, check=False).stdout  # fmt: skip
    pairs: list[tuple[str, str]] = []  # (flag, value), each once (scopes repeat them)
    for line in listed.splitlines():  # scope.key='value one value two'
        key, _, quoted = line.partition("=")
        flag = FLAGS.get(key.rsplit(".", 1)[-1])
        for value in " ".join(shlex.split(quoted)).split() if flag else []:
            if (flag, value) not in pairs:
                pairs.append((flag, value))
    sys.stdout.write(shlex.join(part for pair in pairs for part in pair) + "\n")


if __name__ == "__main__":
    main()
