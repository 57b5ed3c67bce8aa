"""A wheel draws its figures (issue 29, part 8): the figure scripts ship inside the package.

The wheel is built from a copy of the checkout, installed without the source tree (pip --target,
no dependencies: those come from this interpreter's own site-packages), and run from a scratch
folder with only it on PYTHONPATH: a small sweep, then `optimstudy report`, whose figures must
be drawn by the installed scripts.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import write_tiny_spec

REPO = Path(__file__).resolve().parents[2]



@pytest.mark.slow
def test_an_installed_wheel_runs_a_sweep_and_draws_the_report_figures(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            tmp_path / "dist", source], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("optimstudy-*.whl")
    shipped = {Path(name).name for name in zipfile.ZipFile(wheel).namelist()
               if name.startswith("optimstudy/report/figures/")}
    assert {"lr_sensitivity.py", "optimizer_curves.py", "zero_grad.py"} <= shipped

    target = tmp_path / "installed"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, wheel],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    write_tiny_spec(scratch, "wheel", seeds=(0,))  # two lrs of sgd: enough runs for every figure asserted
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # before site-packages, where the checkout's editable install points

    def run(*args, timeout=600):
        return subprocess.run([sys.executable, *map(str, args)], cwd=scratch, env=env, capture_output=True,
                              text=True, timeout=timeout)

    where = run("-c", "import optimstudy, optimstudy.report.scripts as s; print(optimstudy.__file__); "
                      "print(s.BUILT_IN)")
    module, built_in = where.stdout.split()
    assert Path(module).is_relative_to(target) and not Path(module).is_relative_to(REPO), where.stdout
    assert Path(built_in).is_relative_to(target)

    sweep = run("-m", "optimstudy", "sweep", "wheel.toml")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    report = run("-m", "optimstudy", "report", "--out", "out")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "no analysis scripts" not in report.stderr
    assert f"from {built_in}" in report.stderr, report.stderr[-3000:]  # drawn by the installed scripts
    figures = {path.name for path in (scratch / "out" / "figures").glob("*.png")}
    assert {"lr_sensitivity.png", "optimizer_curves.png"} <= figures, (figures, report.stderr[-3000:])
    assert all((scratch / "out" / "figures" / name).stat().st_size > 5000 for name in figures)
    assert "lr_sensitivity.png" in (scratch / "out" / "report.html").read_text()

    # a script of the user's own in ./analysis adds a figure; one named like a built-in replaces it
    (scratch / "analysis").mkdir()
    mine = (Path(built_in) / "lr_sensitivity.py").read_text().replace('TITLE = "', 'TITLE = "Mine: ', 1)
    assert "Mine: " in mine
    (scratch / "analysis" / "lr_sensitivity.py").write_text(mine)
    report = run("-m", "optimstudy", "report", "--out", "out2", "--no-log-to-store")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "replaces the built-in lr_sensitivity" in report.stderr
    assert "Mine: " in (scratch / "out2" / "report.html").read_text()
    assert "optimizer_curves.png" in {path.name for path in (scratch / "out2" / "figures").glob("*.png")}
