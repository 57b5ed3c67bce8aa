"""The study itself: every experiment spec is valid, and the results say what the lessons say.

The lesson checks run the real quickstart spec at reduced size through the whole chain
(spec -> Optuna sweep -> MLflow -> tidy table). They check directions only; which optimizer
"wins" is what the study measures, so no test names a winner.
"""
import json
import re
import tomllib
from pathlib import Path

import pytest
import torch
from helpers import once_per_session, run_cli

from optimstudy.cli import main
from optimstudy.sweep.planning import plan
from optimstudy.sweep.spec_reader import load_spec
from optimstudy.tracking.reader import load_runs

EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.toml"))
LESSON_SPECS = {"quickstart", "mnist_optimizers", "lr_sensitivity", "zero_grad", "loss_functions", "regression",
                "landscape", "devices", "fashion_mnist"}


def test_every_lesson_has_its_spec():
    assert LESSON_SPECS <= {path.stem for path in EXPERIMENTS}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_spec_loads_and_its_dry_run_lists_its_trials(path, capsys, tmp_path, monkeypatch):
    spec = load_spec(path)
    planned, _ = plan(spec)
    assert planned, f"{path.name} plans no trial"
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{len(planned)} trials" in out
    assert len([line for line in out.splitlines() if line[:4].strip().isdigit()]) == len(planned)
    assert not (tmp_path / "mlruns").exists()  # a dry run touches no store


def reduced_quickstart(folder: Path, steps: int) -> Path:
    raw = (Path(__file__).resolve().parents[2] / "experiments" / "quickstart.toml").read_text()
    assert "steps = 300" in raw and "seeds = [0, 1]" in raw and "\n[confirm]" in raw
    text = raw.replace("steps = 300", f"steps = {steps}").replace("seeds = [0, 1]", "seeds = [0]")
    text = re.sub(r"\n\[confirm\][^\n]*\nseeds = \d+[^\n]*\n", "\n", text)  # one run per configuration
    tomllib.loads(text)
    path = folder / "quickstart.toml"
    path.write_text(text)
    return path




def sweep_the_reduced_quickstart(folder: Path) -> None:
    spec = reduced_quickstart(folder, steps=200)
    result = run_cli("sweep", spec, "--workers", "2", "--json", cwd=folder, check_exit=0, timeout=600)
    (folder / "summary.json").write_text(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def quickstart_frame(tmp_path_factory, mnist_dir):
    folder = once_per_session(tmp_path_factory, "shared-quickstart", sweep_the_reduced_quickstart)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trials"]["failed"] == 0
    frame = load_runs(summary["tracking_uri"], experiments=["quickstart"])
    return frame[frame["kind"] == "trial"]


def final(frame, metric, **params):
    rows = frame[frame["metric"] == metric]
    for key, value in params.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, (metric, params, len(rows))
    return float(rows["value"].iloc[0])


def curve(frame, metric, **params):
    rows = frame[frame["metric"] == metric]
    for key, value in params.items():
        rows = rows[rows[key] == value]
    assert rows["run_id"].nunique() == 1, params
    return rows.sort_values("step")["value"].tolist()


@pytest.mark.slow
@pytest.mark.study
def test_forgetting_zero_grad_grows_the_gradient_and_ends_worse(quickstart_frame):
    mnist = quickstart_frame[(quickstart_frame["problem"] == "mnist_mlp") & (quickstart_frame["accumulate"] == 1)]
    bug = dict(optimizer="sgd", lr=0.1, zero_grad=False, batch_size=64)
    fine = dict(optimizer="sgd", lr=0.1, zero_grad=True, batch_size=64)
    norms = curve(mnist, "grad_norm", **bug)
    assert sum(norms[-20:]) > 2 * sum(norms[:20])
    assert final(mnist, "final_val_loss", **bug) > final(mnist, "final_val_loss", **fine)


@pytest.mark.slow
@pytest.mark.study
def test_mean_error_fails_while_mse_reaches_the_optimum(quickstart_frame):
    linreg = quickstart_frame[quickstart_frame["problem"] == "linreg"]
    assert final(linreg, "final_excess_loss", optimizer="sgd", lr=0.1, loss="mse") < 1e-2
    broken = linreg[(linreg["loss"] == "mean_error")]
    assert broken["run_id"].nunique() == 1
    diverged = broken[broken["metric"] == "diverged"]["value"].iloc[0] == 1.0
    excess = broken[broken["metric"] == "final_excess_loss"]["value"]
    assert diverged or float(excess.iloc[0]) > 1.0  # far from the optimum either way
    assert min(curve(linreg, "train_loss", loss="mean_error")) < 0  # the signed error "looks" better than perfect


@pytest.mark.slow
@pytest.mark.study
def test_too_large_diverges_too_small_barely_moves_the_middle_converges(quickstart_frame):
    linreg = quickstart_frame[(quickstart_frame["problem"] == "linreg") & (quickstart_frame["loss"] == "mse")]
    sgd = linreg[linreg["optimizer"] == "sgd"]
    assert final(sgd, "diverged", lr=1.0) == 1.0
    assert final(sgd, "diverged", lr=0.1) == 0.0 and final(sgd, "final_excess_loss", lr=0.1) < 1e-2
    # lr 0.001: the same 200 steps leave it far from the optimum, 100x worse than lr 0.1
    too_small = final(sgd, "final_excess_loss", lr=0.001)
    assert too_small > 0.5 and too_small > 100 * final(sgd, "final_excess_loss", lr=0.1)


@pytest.mark.slow
@pytest.mark.study
def test_adam_and_sgd_converge_at_their_own_best_lr_and_the_best_lrs_differ(quickstart_frame):
    mnist = quickstart_frame[(quickstart_frame["problem"] == "mnist_mlp") & (quickstart_frame["zero_grad"])
                             & (quickstart_frame["accumulate"] == 1)]
    accuracy = mnist[mnist["metric"] == "final_val_accuracy"]
    best = accuracy.loc[accuracy.groupby("optimizer")["value"].idxmax()].set_index("optimizer")
    assert best.loc["sgd", "value"] > 0.85 and best.loc["adam", "value"] > 0.85
    assert best.loc["sgd", "lr"] != best.loc["adam", "lr"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cpu_and_gpu_curves_agree_for_the_same_seed():
    from optimstudy import RunConfig, train

    cpu = train(RunConfig(problem="linreg", optimizer="adam", lr=0.01, steps=200, device="cpu"))
    gpu = train(RunConfig(problem="linreg", optimizer="adam", lr=0.01, steps=200, device="cuda"))
    assert gpu.step_metrics["train_loss"] == pytest.approx(cpu.step_metrics["train_loss"], rel=1e-3, abs=1e-5)
