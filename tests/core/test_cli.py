"""A stage's entry point: known failures are one ERROR line and exit 1, Ctrl-C is 130,
anything else is a bug and keeps its traceback."""

import contextlib
import gc
import logging
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from pipeline.core import cli
from pipeline.core.errors import DataError, ParamsError, PipelineError


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """cli.run installs SIGINT/SIGTERM handlers for the process; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _raise(exc):
    def main():
        raise exc

    return main


def _errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "exc",
    [
        PipelineError("store unreachable"),
        ParamsError("params.yaml: train.batch_size: must be >= 1, got -3"),
        DataError("data/raw missing"),
    ],
)
def test_a_pipeline_error_is_one_error_line_and_exit_1(exc, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as e:
        cli.run(_raise(exc))
    assert e.value.code == 1
    [record] = _errors(caplog)
    assert record.name == "pipeline" and record.getMessage() == str(exc)


def test_keyboard_interrupt_exits_130(caplog):
    with pytest.raises(SystemExit) as e:
        cli.run(_raise(KeyboardInterrupt()))
    assert e.value.code == 130
    assert [r.getMessage() for r in _errors(caplog)] == ["interrupted"]


def test_a_plain_exception_propagates(caplog):
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda: 1 / 0)
    assert not _errors(caplog)


def test_a_value_error_that_is_not_a_params_error_propagates():
    with pytest.raises(ValueError, match="bug"):
        cli.run(_raise(ValueError("bug")))


def test_success_returns_normally(caplog):
    calls = []
    assert cli.run(lambda: calls.append(1)) is None
    assert calls == [1] and not _errors(caplog)


def test_sigterm_unwinds_like_ctrl_c():
    def main():
        signal.raise_signal(signal.SIGTERM)

    with pytest.raises(SystemExit) as e:
        cli.run(main)
    assert e.value.code == 130


def test_the_error_line_on_stderr():
    """In a real process (no pytest log capture): exactly one ``HH:MM:SS ERROR msg`` line."""
    code = textwrap.dedent(
        """
        from pipeline.core.cli import run
        from pipeline.core.errors import ParamsError

        def main():
            raise ParamsError("params.yaml: train.epochs: must be >= 1, got 0")

        run(main)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d ERROR params\.yaml: train\.epochs: must be >= 1, got 0", lines[0]
    )


@pytest.mark.parametrize("main", [lambda: None, _raise(ParamsError("bad")), lambda: 1 / 0])
def test_what_lives_at_exit_is_frozen(main):
    """Objects that live until the process exits are out of the garbage collector's reach
    (gc.freeze), so the interpreter's exit does not walk them: also after a failure."""
    kept = []

    def stage():
        kept.extend([{"n": i}] for i in range(1000))  # tracked containers made by main()
        main()

    gc.unfreeze()
    try:
        with contextlib.suppress(SystemExit, ZeroDivisionError):
            cli.run(stage)
        assert gc.get_freeze_count() >= 2000
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _interrupt_handler():
    previous = signal.signal(signal.SIGINT, cli._raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_inside_a_deferred_block_is_raised_when_the_outermost_one_ends():
    steps = []
    outer = cli.interrupts_deferred()
    with _interrupt_handler(), pytest.raises(KeyboardInterrupt, match="signal 2"), outer:
        with cli.interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            steps.append("inner finished")
        steps.append("outer finished")
    assert steps == ["inner finished", "outer finished"]
    with _interrupt_handler(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)  # outside a block: at once, and nothing was held
    with _interrupt_handler(), cli.interrupts_deferred():
        steps.append("a later block is not interrupted")


def test_a_store_write_cut_by_ctrl_c_still_lets_the_run_be_marked_killed(tmp_path):
    # The cut write held SQLite's lock and end_run failed with "database is locked".
    import threading

    import mlflow

    from pipeline.core.tracking.runs import end_run, log_metrics

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("interrupted")
    statuses = []
    with _interrupt_handler():
        for delay in (0.0, 0.01, 0.03, 0.05, 0.08, 0.1, 0.13, 0.17):
            run = mlflow.start_run(experiment_id=experiment)
            with contextlib.suppress(KeyboardInterrupt):  # (it may land in start() already)
                threading.Timer(delay, signal.raise_signal, [signal.SIGINT]).start()
                for step in range(100_000):
                    log_metrics({"loss": step, "accuracy": step}, step=step)
            end_run("KILLED")
            statuses.append(mlflow.get_run(run.info.run_id).info.status)
    assert statuses == ["KILLED"] * 8
