"""Bad input fails before anything runs: exit 2, a message naming what is wrong and what is
valid, and nothing written to any store (no ./mlruns in the working directory).

Real parts only: `optimstudy` commands, a closed port on 127.0.0.1 for a server that is not
there, a real `mlflow server` that is stopped mid-sweep, a truncated copy of the MNIST fixture. A
refusal is the command's own code, not its process's: most run in this process (refused_here), one
of each kind in a real process (exit code as the interpreter sets it, no traceback printed, the
user's module imported from the working directory by `python -m`, a process that ends within seconds).
"""
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import in_process

from optimstudy.problems.optimizers import OptimizerArgumentError, optimizer_arguments

SCRIPT = Path(sys.executable).with_name("optimstudy")  # the installed command, as the README runs it


def spec_file(folder: Path, optimizer_table: str, name: str = "bad-input") -> Path:
    path = folder / f"{name}.toml"
    header = f'name = "{name}"\nproblem = "linreg"\nsteps = 20\nseeds = [0]\n\n'
    path.write_text(header + textwrap.dedent(optimizer_table))
    return path


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_nothing_written(folder: Path) -> None:
    assert not (folder / "mlruns").exists(), sorted(p.name for p in (folder / "mlruns").rglob("*"))
    assert not list(folder.glob("*.db")) and not list(folder.glob("*.journal"))


def refused_here(*args, cwd: Path) -> subprocess.CompletedProcess:
    """helpers.in_process, leaving this process as it found it: the sys.path entry the command adds for
    the working directory (imports.import_object) and the user's modules it imported from there
    (broken_optim.py of one test's folder must not be the next test's) are taken back."""
    path, modules = list(sys.path), set(sys.modules)
    try:
        return in_process(*args, cwd=cwd)
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            file = getattr(sys.modules[name], "__file__", None)
            if file and Path(file).resolve().is_relative_to(Path(cwd).resolve()):
                del sys.modules[name]


def write_broken_optimizer(folder: Path) -> None:
    (folder / "broken_optim.py").write_text(textwrap.dedent("""\
        import torch

        class Broken(torch.optim.SGD):
            def __init__(self, params, lr=0.1, beta=0.5):
                if not 0 <= beta < 1:
                    raise ValueError(f"beta must lie in [0, 1), got {beta}")
                super().__init__(params, lr=lr)
        """))


# ---- 1. optimizer arguments are checked before anything runs --------------------------------

@pytest.mark.parametrize("table, key, given, valid", [
    ('[optimizers.adam]\nlr = [0.01]\nbetas = "fast"\n', "optimizers.adam.betas", 'betas = "fast"',
     "betas = [0.9, 0.999]"),
    ("[optimizers.momentum]\nlr = [0.01]\nmomentum = -1.0\n", "optimizers.momentum.momentum", "momentum = -1.0",
     "Invalid momentum value"),
    ('[optimizers.adam]\nlr = [0.01]\namsgrad = "yes"\n', "optimizers.adam.amsgrad", 'amsgrad = "yes"',
     "true or false"),
    ('[optimizers.broken]\noptimizer = "broken_optim:Broken"\nlr = [0.01]\nbeta = 2.0\n',
     "optimizers.broken.beta", "beta = 2.0", "beta must lie in [0, 1)"),
    ('[optimizers.lbfgs]\noptimizer = "torch.optim:LBFGS"\nlr = [0.01]\n', "optimizers.lbfgs", "LBFGS",
     "needs a closure"),
    ('[optimizers.sgd]\nlr = [0.01]\n\n[[runs]]\noptimizer = "adam"\nlr = 0.01\nopt = { betas = [0.9] }\n',
     "runs[0].opt.betas", "betas = [0.9]", "2 numbers"),
])
def test_sweep_refuses_a_bad_optimizer_argument_at_load(cli, tmp_path, table, key, given, valid):
    write_broken_optimizer(tmp_path)
    spec = spec_file(tmp_path, table)
    if "broken_optim" in table:  # a real process: its exit code, and the user's module found by `python -m`
        result = cli("sweep", spec, cwd=tmp_path, timeout=120)
    else:
        result = refused_here("sweep", spec, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert f"key '{key}'" in message and given in message and valid in message, message
    assert "Traceback" not in result.stderr
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("argv, expected", [
    (["--optimizer", "momentum", "--opt", "momentum=fast"],
     ["--opt momentum=fast", "needs momentum to be a number", "valid e.g. --opt momentum=0.9"]),
    (["--optimizer", "adam", "--opt", "betas=fast"],
     ["--opt betas=fast", "2 numbers", "--opt betas=0.9,0.999"]),
    (["--optimizer", "momentum", "--opt", "momentum=-1.0"],
     ["--opt momentum=-1.0", "Invalid momentum value: -1.0"]),
    (["--optimizer", "broken_optim:Broken", "--opt", "beta=2"], ["--opt beta=2", "beta must lie in [0, 1), got 2"]),
    (["--optimizer", "torch.optim:LBFGS"], ["torch.optim:LBFGS", "needs a closure", "sgd, momentum"]),
])
def test_run_names_the_bad_opt_and_what_is_valid(tmp_path, argv, expected):
    write_broken_optimizer(tmp_path)  # (a real process imports it in the sweep test above)
    result = refused_here("run", "--problem", "linreg", "--steps", "5", *argv, cwd=tmp_path)  # tracked
    assert result.returncode == 2, result.stderr[-2000:]
    for part in expected:
        assert part in result.stderr, (part, result.stderr)
    assert "Traceback" not in result.stderr and "TypeError" not in result.stderr
    assert_nothing_written(tmp_path)


def test_optimizer_arguments_checks_types_and_builds_once():
    assert optimizer_arguments("adam", {"betas": (0.8, 0.9), "amsgrad": True}, lr=1e-3) == {
        "betas": (0.8, 0.9), "amsgrad": True}
    assert optimizer_arguments("momentum", {"momentum": 0}, lr=0.1) == {"momentum": 0}  # an int for a float
    with pytest.raises(OptimizerArgumentError) as caught:
        optimizer_arguments("sgd", {"nesterov": True}, lr=0.1)  # torch: nesterov needs momentum
    assert caught.value.arguments == ("nesterov",) and "Nesterov momentum requires" in str(caught.value)
    with pytest.raises(OptimizerArgumentError):
        optimizer_arguments("adam", {"eps": float("nan")})


# ---- 2. a tracking server that is not there, or that stops --------------------------------

@pytest.mark.parametrize("scheme", ["http", "postgresql+psycopg"])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_unreachable_tracking_uri_fails_within_seconds(cli, tmp_path, scheme, command):
    port = closed_port()
    uri = f"http://127.0.0.1:{port}" if scheme == "http" else f"{scheme}://user:secret@127.0.0.1:{port}/mlflow"
    args = (["run", "--problem", "linreg", "--steps", "5"] if command == "run"
            else ["sweep", spec_file(tmp_path, "[optimizers.sgd]\nlr = [0.1]\n")])
    started = time.monotonic()
    if (command, scheme) in (("run", "http"), ("sweep", "postgresql+psycopg")):
        # one real process for each client (urllib3's retries, psycopg's connect): it ends within seconds too,
        # no thread of the client keeping it alive past its message
        result = cli(*args, "--tracking-uri", uri, cwd=tmp_path, timeout=200)
    else:
        result = refused_here(*args, "--tracking-uri", uri, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert elapsed < 30, f"{elapsed:.0f} s (MLflow alone retries for minutes)"
    message = result.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in message and "Connection refused" in message, message
    assert "cannot be reached" in message, message  # as test_exit_codes' report says it (it leans on these runs)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert "secret" not in result.stderr
    assert_nothing_written(tmp_path)  # neither the MLflow store nor the sweep's Optuna journal


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # as `optimstudy ui`: no job runners
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            assert process.poll() is None, "mlflow server exited"
            time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail("mlflow server did not start in 90 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def trial_steps_stored(database: Path) -> bool:
    """True once the server has stored a step of a trial: read from its SQLite store, a look of
    milliseconds (asking the server through MLflow's client took long enough for more of the trial to go)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as connection:
            return connection.execute(
                "SELECT 1 FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid AND t.key = 'optimstudy.kind' "
                "AND t.value = 'trial' LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # the store is being made
        return False


@pytest.mark.slow
@pytest.mark.waits
def test_mlflow_server_stopping_mid_sweep_is_said_and_retried(tmp_path):
    """Stop the server while a trial writes its steps: the sweep says so at once and keeps retrying;
    the server back on the same port, the sweep finishes every trial."""
    if not SCRIPT.exists():
        pytest.skip("the optimstudy command is not installed beside this Python")
    port = closed_port()
    server = start_mlflow_server(tmp_path, port)
    spec = spec_file(tmp_path, "[optimizers.sgd]\nlr = [0.01]\n", name="server-stops")
    # ~13k metric points over HTTP (was 20000 steps, ~62k points: the server's work, each point); the server is
    # stopped as the first steps reach it (~70 of 4000 seen), with a dozen log_batch calls of 1,000 still to come
    spec.write_text(spec.read_text().replace("steps = 20", "steps = 4000"))
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # MLflow's waits 0, 2, 4, 8 s... not 0, 4, 8, 16
    sweep = subprocess.Popen([str(SCRIPT), "sweep", str(spec), "--tracking-uri", f"http://127.0.0.1:{port}"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(sweep.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not trial_steps_stored(tmp_path / "server.db"):
            assert sweep.poll() is None, "".join(lines)
            time.sleep(0.05)
        stop(server)  # mid-trial: its steps are being written
        stopped = time.monotonic()
        while time.monotonic() - stopped < 30 and not any("does not answer" in line for line in lines):
            time.sleep(0.2)
        said = [line for line in lines if "does not answer" in line]
        assert said, "".join(lines)[-3000:]
        assert time.monotonic() - stopped < 15, "the first retry is said at once, not after MLflow's minutes"
        assert f"127.0.0.1:{port}" in said[0] and "retrying" in said[0], said[0]
        server = start_mlflow_server(tmp_path, port)  # back: the retries pick it up
        assert sweep.wait(timeout=400) == 0, "".join(lines)[-3000:]
        reader.join(timeout=10)
        assert "1 complete" in "".join(lines), "".join(lines)[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
        stop(server)


# ---- 3. files that are there but unreadable -----------------------------------------------

def test_spec_that_is_not_utf8_is_named(tmp_path):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes('name = "café"\nproblem = "linreg"\nsteps = 5\n[optimizers.sgd]\nlr = [0.1]\n'.encode("latin-1"))
    result = refused_here("sweep", spec, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "latin1.toml: not UTF-8" in result.stderr and "line 1, column 12" in result.stderr, result.stderr
    assert "UnicodeDecodeError" not in result.stderr
    assert_nothing_written(tmp_path)


def test_truncated_mnist_file_is_named_as_corrupt(tmp_path, mnist_dir):
    raw = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(Path(mnist_dir) / "MNIST" / "raw", raw)
    images = raw / "train-images-idx3-ubyte"
    images.chmod(0o644)
    with open(images, "r+b") as file:
        file.truncate(images.stat().st_size // 2)  # a copy interrupted half way
    result = refused_here("run", "--problem", "mnist_logreg", "--steps", "2", "--data-dir", tmp_path / "data",
                          cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{images} is corrupt" in result.stderr, result.stderr
    assert "could not be downloaded" not in result.stderr
    assert_nothing_written(tmp_path)


# ---- 4. the README's custom optimizer, from the folder that holds it ----------------------

def test_custom_optimizer_in_the_working_directory_imports_everywhere(tmp_path):
    """`optimstudy run --optimizer mypackage.optim:Lion` from the project root, as the README says,
    with the installed command (python -m would put the folder on sys.path by itself), and a
    sweep whose second worker process imports it too."""
    if not SCRIPT.exists():
        pytest.skip("the optimstudy command is not installed beside this Python")
    (tmp_path / "mypackage").mkdir()
    (tmp_path / "mypackage" / "__init__.py").write_text("")
    (tmp_path / "mypackage" / "optim.py").write_text(textwrap.dedent("""\
        import torch

        class Lion(torch.optim.SGD):  # stands in for the README's Lion: same arguments
            def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
                super().__init__(params, lr=lr, weight_decay=weight_decay)
        """))
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != tmp_path]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **({"PYTHONPATH": os.pathsep.join(kept)}
                                                                         if kept else {})}  # never the folder
    run = subprocess.run([str(SCRIPT), "run", "--problem", "linreg", "--steps", "5", "--no-track", "--optimizer",
                          "mypackage.optim:Lion", "--lr", "1e-2", "--opt", "betas=0.9,0.99", "--opt",
                          "weight_decay=0.01"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    spec = spec_file(tmp_path, '[optimizers.lion]\noptimizer = "mypackage.optim:Lion"\nlr = [0.01, 0.02, 0.03]\n',
                     name="custom")
    sweep = subprocess.run([str(SCRIPT), "sweep", str(spec), "--workers", "2"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "3 complete" in sweep.stderr and "failed" not in sweep.stderr.replace("0 failed", ""), sweep.stderr


# ---- 5. the model meets the data before any run is created ---------------------------------

BAD_PROBLEMS = '''\
import torch
from torch import nn
from optimstudy.problems.registry import Problem

def blobs(generator):
    x = torch.randn(200, 3, generator=generator)
    return x, (x[:, 0] > 0).long()

def blobs_in_a_column(generator):
    x = torch.randn(200, 3, generator=generator)
    return x, (x[:, 0] > 0).long().unsqueeze(1)

def weights_as_a_dict(data):
    return {"w": torch.zeros(3)}

def five_inputs(data):
    return nn.Linear(5, data.outputs)

def one_score(data):
    return nn.Linear(data.input_size, 1)

def four_values(data):
    return nn.Linear(data.input_size, 4)

dict_model = Problem(data=blobs, make_model=weights_as_a_dict)
wrong_width = Problem(data=blobs, make_model=five_inputs)
column_labels = Problem(data=blobs_in_a_column, make_model=one_score)
too_few_classes = Problem(data=blobs, make_model=one_score)
four_outputs = Problem(data="linreg", make_model=four_values, task="regression")
'''


@pytest.fixture
def bad_problems(tmp_path, monkeypatch):
    (tmp_path / "bad_problems.py").write_text(BAD_PROBLEMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("bad_problems", None)


@pytest.mark.parametrize("problem, expected", [
    ("dict_model", ["bad_problems:weights_as_a_dict returned a dict, not a torch.nn.Module", "expected make_model"]),
    ("wrong_width", ["bad_problems:five_inputs cannot take the data", "(2x3 and 5x2)",
                     "expected a model that takes (3,)"]),
    ("column_labels", ["labels must be one value per row, shape (200,), got shape (200, 1)", "y.squeeze(1)"]),
    ("too_few_classes", ["gave outputs of shape (2, 1); expected (2, 2): one score for each of the data's "
                         "2 classes"]),
    ("four_outputs", ["gave outputs of shape (2, 4); expected (2, 1) or (2,): one value per example"]),
])
def test_a_model_that_does_not_fit_its_data_is_named_before_training(bad_problems, problem, expected):
    from optimstudy.errors import UsageError
    from optimstudy.run.config import RunConfig
    from optimstudy.run.runner import check_model, load_data

    config = RunConfig(problem=f"bad_problems:{problem}", steps=5).resolved()
    with pytest.raises(UsageError) as caught:
        check_model(config, load_data(config))
    message = str(caught.value)
    for part in expected:
        assert part in message, (part, message)
    assert f"problem 'bad_problems:{problem}'" in message or "data 'bad_problems:" in message, message


def test_the_built_in_problems_pass_the_model_check():
    from optimstudy.run.config import RunConfig
    from optimstudy.run.runner import check_model, load_data

    for problem in ("linreg", "valley", "regression_mlp"):
        config = RunConfig(problem=problem, steps=5).resolved()
        check_model(config, load_data(config))  # raises on a mistake in the check itself


def test_run_and_sweep_refuse_a_bad_model_before_writing(bad_problems, capsys):
    """In process, tracked (the default store in the working folder): exit 2, one message, no store."""
    from optimstudy.cli import main

    assert main(["run", "--problem", "bad_problems:dict_model", "--steps", "5"]) == 2
    assert "optimstudy run: error: problem 'bad_problems:dict_model'" in capsys.readouterr().err
    spec = spec_file(bad_problems, "[optimizers.sgd]\nlr = [0.1, 0.01]\n")
    spec.write_text(spec.read_text().replace('"linreg"', '"bad_problems:wrong_width"'))
    assert main(["sweep", str(spec)]) == 2
    error = capsys.readouterr().err
    assert "optimstudy sweep: error: problem 'bad_problems:wrong_width'" in error and "Traceback" not in error, error
    assert_nothing_written(bad_problems)


def test_seeds_outside_torchs_range_are_refused_where_given(tmp_path):
    from optimstudy.errors import UsageError
    from optimstudy.run.config import RunConfig
    from optimstudy.sweep.spec_reader import load_spec

    for seed in (99999999999999999999, 2**63, -1):
        with pytest.raises(UsageError, match=r"seed must be an integer from 0 to 2\*\*63 - 1"):
            RunConfig(problem="linreg", seed=seed)
    with pytest.raises(UsageError, match=r"split_seed must be an integer from 0 to 2\*\*63 - 1"):
        RunConfig(problem="linreg", split_seed=2**64)
    RunConfig(problem="linreg", seed=2**63 - 1, split_seed=2**63 - 1)  # the largest there is
    spec = spec_file(tmp_path, "[optimizers.sgd]\nlr = [0.1]\n")
    spec.write_text(spec.read_text().replace("seeds = [0]", "seeds = [0, -3]"))
    with pytest.raises(UsageError, match=r"key 'seeds'.*got -3; expected each seed an integer from 0 to 2\*\*63"):
        load_spec(spec)


def test_a_spec_with_a_byte_order_mark_and_a_name_in_any_script_loads(tmp_path):
    from optimstudy.errors import UsageError
    from optimstudy.sweep.spec_reader import load_spec

    spec = spec_file(tmp_path, "[optimizers.sgd]\nlr = [0.1]\n", name="ünïcødé études")
    spec.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes())  # as Notepad saves UTF-8
    loaded = load_spec(spec)
    assert loaded.name == "ünïcødé études" and not loaded.text.startswith("\ufeff")
    spec.write_text(spec.read_text(encoding="utf-8-sig").replace("ünïcødé études", "a/b"), encoding="utf-8")
    with pytest.raises(UsageError,
                       match=r"key 'name'.*got 'a/b'; expected 1-100 characters: letters, .*\(letters of any script"):
        load_spec(spec)
