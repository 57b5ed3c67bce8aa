"""What tests share besides fixtures: imported as `from helpers import ...` (tests/ is on sys.path:
pytest puts the folder of the top conftest.py there). conftest.py holds the fixtures; a conftest.py
in a subfolder would shadow it as a module, this name is not shadowed."""
import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REQUIRED = os.environ.get("OPTIMSTUDY_REQUIRE_FIXTURES") == "1"


def missing(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (OPTIMSTUDY_REQUIRE_FIXTURES=1: CI must not skip this)")
    pytest.skip(reason)


def run_cli(*args, cwd=None, env=None, timeout=300, check_exit=None):
    """Run `python -m optimstudy ARGS` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "optimstudy", *map(str, args)], cwd=cwd, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    if check_exit is not None:
        assert result.returncode == check_exit, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    return result


def in_process(*args, cwd):
    """`optimstudy ARGS` run in CWD by this process, as run_cli runs it in a new one (whose start costs
    ~5 s of imports on 2 busy cores): for a command whose subject is not the process (a refusal of bad
    input, a `check` that only reads or repairs the stores). Returns a CompletedProcess like run_cli's."""
    from optimstudy.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return subprocess.CompletedProcess(["optimstudy", *map(str, args)], code, out.getvalue(), err.getvalue())


def write_tiny_spec(folder: Path, name: str, steps: int = 40, seeds=(0, 1), optimizers=None) -> Path:
    """FOLDER/NAME.toml: a linreg sweep small enough for a test, each optimizer label with its grid
    of learning rates (default: sgd at 0.01 and 0.1). Returns its path."""
    lines = [f'name = "{name}"', 'problem = "linreg"', f"steps = {steps}", f"seeds = {list(seeds)}"]
    for label, lrs in (optimizers or {"sgd": [0.01, 0.1]}).items():
        lines += [f"[optimizers.{label}]", f"lr = {lrs}"]
    path = Path(folder) / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def once_per_session(tmp_path_factory, name: str, build) -> Path:
    """A folder that `build(folder)` fills once per test session, across pytest-xdist workers too: a
    module's tests may be spread over both workers, and each would run its module fixture again. The
    first to come builds it under a file lock; the others wait for it and read the same folder."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: this session's, shared
    folder, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
