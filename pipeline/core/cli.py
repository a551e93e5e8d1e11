"""Entry point shared by the stages: logging set-up and one-line errors with exit codes."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline")


def dvc_command() -> str:
    """This environment's DVC (beside the running python, as make puts it first on PATH),
    else PATH's: a command run outside make still gets the project's DVC."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def setup_logging() -> None:
    """INFO to stderr; LOGLEVEL=DEBUG for more."""
    logging.basicConfig(
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


def run(main: Callable[[], object]) -> None:
    """Run a stage's ``main()``: a PipelineError becomes one ``HH:MM:SS ERROR message``
    log line and exit 1 (its message is one line by construction), Ctrl-C/SIGTERM 130."""
    setup_logging()
    # SIGTERM (dvc queue kill, CI timeouts) unwinds like Ctrl-C, so `finally` blocks and
    # the tracking module can mark the run KILLED and temp files are removed. SIGINT is set
    # explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    # The ~1M objects that importing TensorFlow, MLflow and pandas made live as long as the
    # process: frozen, no collection walks them again, and neither does the one the
    # interpreter runs as it exits (0.8-1.3 s of every stage's exit on 2 cores; BENCHMARKS.md).
    gc.freeze()
    try:
        main()
    except PipelineError as e:  # ParamsError, DataError, TrackingError, ... included
        log.error("%s", e)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("interrupted")
        sys.exit(130)
    finally:
        gc.freeze()  # what main() made, too: the exit is next


_received: list[int] = []  # signals seen by this process


def signals_received() -> int:
    """How many SIGINT/SIGTERM this process received. The KeyboardInterrupt the handler
    raises can be swallowed when it lands in a callback Python ignores exceptions from (an
    import lock's weakref callback, a ``__del__``), so long loops also compare this count
    with the one they started with, between steps."""
    return len(_received)


_depth = 0  # how many interrupts_deferred blocks the main thread is in
_held: list[int] = []  # signals that arrived inside one


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM's KeyboardInterrupt back until the block ends (a decorator too).

    A tracking store's write cut midway leaves its transaction open: SQLite stays locked
    and the run could not then be marked KILLED ("database is locked"). Only the main
    thread's blocks count: the handler runs there and nowhere else.
    """
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _held:
            signum = _held.pop()
            _held.clear()
            raise KeyboardInterrupt(f"signal {signum}")


def _raise_interrupt(signum: int, frame: object) -> None:
    _received.append(signum)
    if _depth:  # raised when the outermost block ends
        _held.append(signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")
