"""One exit code per fault: bad input exits 2, naming what is wrong, before anything is written, and
Ctrl-C prints one line. Real `optimstudy` processes, a real PostgreSQL server that refuses, real
signals sent to a real report's process group (as a terminal's Ctrl-C does). A refusal is the
command's own code: most run in this process (test_bad_input.refused_here), one of each kind in a
real process, whose exit code the interpreter sets and whose stderr shows no traceback.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import in_process
from test_bad_input import assert_nothing_written, closed_port, refused_here

NO_PARAMETERS = '''\
from torch import nn
from optimstudy.problems.registry import Problem

def no_weights(data):
    return nn.Flatten()

def frozen(data):
    return nn.Linear(data.input_size, 1).requires_grad_(False)

empty = Problem(data="linreg", make_model=no_weights, task="regression")
all_frozen = Problem(data="linreg", make_model=frozen, task="regression")
'''


def write_spec(folder: Path, name: str, extra: str = "", problem: str = "linreg") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nproblem = "{problem}"\nsteps = 20\nseeds = [0]\n{extra}\n'
                    "[optimizers.sgd]\nlr = [0.1]\n")
    return path


def assert_usage_error(result, *expected):
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in out, (result.returncode, out[-3000:])
    for part in expected:
        assert part in out, (part, out[-3000:])


@pytest.mark.slow
def test_a_spec_nested_thousands_deep_is_named(cli, tmp_path):
    """The RecursionError is the process's: for each kind of nesting, `sweep` in a real process, with the
    recursion limit and stack a fresh interpreter has; --dry-run and `check` read the spec the same way
    (load_spec), in this process, deeper in its stack already."""
    for name, value in (("arrays", "[" * 5000 + "]" * 5000), ("tables", "{a = " * 3000 + "1" + "}" * 3000)):
        spec = write_spec(tmp_path, name, f"x = {value}")
        for command in (("sweep", spec), ("sweep", spec, "--dry-run"), ("check", spec)):
            result = (cli if command == ("sweep", spec) else refused_here)(*command, cwd=tmp_path)
            assert_usage_error(result, f"{spec.name}: arrays or tables nested too deeply", "(line 5)")
    assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_a_model_with_no_trainable_parameters_is_refused_up_front(tmp_path):
    """In this process: the check is the command's own code (that a real process imports the user's module
    from its working directory and refuses with exit 2: test_bad_input's test of broken_optim.py)."""
    (tmp_path / "parameterless.py").write_text(NO_PARAMETERS)
    for problem in ("empty", "all_frozen"):
        expected = f"problem 'parameterless:{problem}': model parameterless:"
        assert_usage_error(refused_here("run", "--problem", f"parameterless:{problem}", "--steps", "5", cwd=tmp_path),
                           expected, "has no trainable parameters")
        spec = write_spec(tmp_path, problem, problem=f"parameterless:{problem}")
        assert_usage_error(refused_here("sweep", spec, cwd=tmp_path), expected, "has no trainable parameters")
    assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_a_val_fraction_that_leaves_no_training_rows_is_named(tmp_path):
    """In this process: the split and its check are the command's own code, not its process's."""
    assert_usage_error(refused_here("run", "--problem", "linreg", "--steps", "5", "--val-fraction", "0.9999",
                                    cwd=tmp_path), "val_fraction 0.9999 holds out all 1000 training rows")
    spec = write_spec(tmp_path, "held_out", "val_fraction = 0.9999")
    assert_usage_error(refused_here("sweep", spec, cwd=tmp_path), "val_fraction 0.9999 holds out all")
    assert_nothing_written(tmp_path)
    done = refused_here("run", "--problem", "linreg", "--steps", "5", "--val-fraction", "0.999", "--no-track",
                        cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]  # one row left to train on: a run


@pytest.mark.slow
@pytest.mark.postgres
def test_report_on_a_store_it_cannot_reach_exits_2_like_sweep_and_run(cli, tmp_path, postgres_server):
    port = closed_port()
    refusing = postgres_server.replace("optimstudy:optimstudy@", "optimstudy:not-the-password@") + "/postgres"
    assert refusing != postgres_server + "/postgres"
    for uri, expected, commands in ((f"http://127.0.0.1:{port}", "cannot be reached", ("report",)),
                                    (f"postgresql+psycopg://u:p@127.0.0.1:{port}/x", "cannot be reached", ("report",)),
                                    (refusing, "refuses the connection", ("report", "sweep", "run"))):
        # sweep and run on a closed port: test_bad_input.py's test_unreachable_tracking_uri_fails_within_seconds
        # (both schemes, both commands: exit 2, "cannot be reached", no traceback, nothing written)
        for command in commands:
            args = {"report": ("report",), "sweep": ("sweep", write_spec(tmp_path, "unreached")),
                    "run": ("run", "--problem", "linreg", "--steps", "5")}[command]
            # the first report a real process (its exit code, no traceback); the rest the same code in this one
            optimstudy = cli if (uri, command) == (f"http://127.0.0.1:{port}", "report") else refused_here
            assert_usage_error(optimstudy(*args, "--tracking-uri", uri, cwd=tmp_path), expected)
    assert not (tmp_path / "analysis").exists()
    assert_nothing_written(tmp_path)


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_ctrl_c_during_report_prints_one_line_and_no_traceback(tmp_path):
    spec = write_spec(tmp_path, "interrupted")
    made = in_process("sweep", spec, cwd=tmp_path)  # only the store to report on: made by this process
    assert made.returncode == 0, made.stderr[-3000:]
    # (when to press Ctrl-C: the store writer forked (it imports MLflow); then the figures drawn in forks too)
    moments = [("the store writer is working", lambda pid: len(children(pid)) >= 1)]
    if (os.cpu_count() or 1) >= 2:
        moments.append(("the figures are being drawn", lambda pid: len(children(pid)) >= 2))
    for moment, now in moments:
        report = subprocess.Popen([sys.executable, "-m", "optimstudy", "report", "--out", "out"], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while not now(report.pid) and report.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert report.poll() is None and now(report.pid), f"the report ended before {moment}"
        os.killpg(report.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        out, err = report.communicate(timeout=120)
        assert report.returncode == 130, (moment, err[-3000:])
        assert "Traceback" not in err and err.strip().splitlines() == [
            "optimstudy report: interrupted; nothing was lost: finished work is in the store"], (moment, err[-3000:])
