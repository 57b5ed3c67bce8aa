"""The optimizers people compare today, against their authors' own loops: Schedule-Free (train/eval
modes), Muon with AdamW on the rest (parameter groups by rule), learning-rate-free Prodigy."""
import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import in_process
from torch import nn

from optimstudy import RunConfig, UsageError, train
from optimstudy.problems.losses import LOSSES
from optimstudy.problems.parameter_groups import SplitOptimizer, build_optimizer, split_parameters
from optimstudy.problems.registry import resolve_problem
from optimstudy.run.batches import Batches
from optimstudy.run.training import evaluate, load_data

REPO = Path(__file__).resolve().parents[2]


def reference_batches(config: RunConfig, data):
    """The batches train() takes: the same rows in the same order (seed 0 seeds the order whatever `vary` says)."""
    return Batches(data.train, config.batch_size, torch.Generator().manual_seed(config.seed), config.shuffle)


# ---- Schedule-Free: evaluated at the averaged weights ----------------------------------------

def schedule_free_readme_loop(config: RunConfig, data, switch: bool) -> list[float]:
    """schedulefree's README loop: optimizer.train() before training steps, optimizer.eval() before
    evaluating (model.train()/model.eval() beside them). switch=False leaves the eval() out."""
    import schedulefree

    problem = resolve_problem(config.problem)
    torch.manual_seed(config.seed)
    model = problem.build_model(data.info)
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=config.lr)
    loss_fn, batches = LOSSES[problem.default_loss][0], reference_batches(config, data)
    losses = []

    def evaluate_now():
        model.eval()
        if switch:
            optimizer.eval()
        losses.append(evaluate(model, data.val, loss_fn, problem.task)["loss"])
        model.train()
        optimizer.train()

    model.train()
    optimizer.train()
    evaluate_now()
    for step in range(1, config.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        x, y = next(batches)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if step % config.eval_every == 0:
            evaluate_now()
    return losses


def test_schedule_free_is_evaluated_at_its_averaged_weights_as_its_readme_loop_does():
    config = RunConfig(problem="regression_mlp", optimizer="schedulefree:AdamWScheduleFree", lr=0.01,
                       steps=60, eval_every=20, batch_size=32, seed=0)
    data = load_data(config.resolved())
    history = train(config, data=data)
    ours = [e["val_loss"] for e in history.evals]
    assert [e["step"] for e in history.evals] == [0, 20, 40, 60]
    assert ours == schedule_free_readme_loop(config, data, switch=True)  # exactly, step for step
    # and the switch matters: at the training sequence's weights every later evaluation differs
    unswitched = schedule_free_readme_loop(config, data, switch=False)
    assert all(a != b for a, b in zip(ours[1:], unswitched[1:]))
    assert history.final["val_loss"] == ours[-1]  # the final metrics read the averaged weights too


# ---- Muon on the hidden matrices, AdamW on the rest ------------------------------------------

def test_the_hidden_matrices_rule():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))
    matrices, rest = split_parameters(mlp)
    assert matrices == [mlp[1].weight, mlp[3].weight]  # the first layer's input is dense: it is hidden
    assert rest == [mlp[1].bias, mlp[3].bias, mlp[5].weight, mlp[5].bias]  # biases and the output layer
    text = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 10))
    matrices, rest = split_parameters(text)
    assert matrices == [text[2].weight]  # not the embedding, the norm's gains or the head
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    matrices, rest = split_parameters(conv)
    assert matrices == [conv[2].weight] and conv[0].weight in rest  # 4-D filters: torch's Muon takes 2-D only
    with pytest.raises(UsageError, match="no hidden matrices"):  # one Linear layer is all head
        build_optimizer(nn.Linear(3, 1), "muon", 0.02, {}, {"optimizer": "adamw", "lr": 1e-3})


def test_a_matrices_only_optimizer_needs_a_rest_and_a_rest_is_checked():
    with pytest.raises(UsageError, match="takes only matrices.*--rest optimizer=adamw"):
        RunConfig(problem="regression_mlp", optimizer="torch.optim:Muon", lr=0.02)
    for rest, message in (({"optimizer": "adamw"}, "exactly one of lr .* or lr_ratio"),
                          ({"lr": 1e-3}, "rest needs optimizer"),
                          ({"optimizer": "adamw", "lr": -1.0}, "rest lr must be a positive number"),
                          ({"optimizer": "adamw", "lr": 1e-3, "betas": "fast"}, "rest: .*betas"),
                          ({"optimizer": "adamm", "lr": 1e-3}, "rest: unknown optimizer 'adamm'")):
        with pytest.raises(UsageError, match=message):
            RunConfig(problem="regression_mlp", optimizer="torch.optim:Muon", lr=0.02, rest=rest)
    config = RunConfig(problem="regression_mlp", optimizer="muon", lr=0.02)  # the registry's rest, logged
    assert config.params()["rest.optimizer"] == "adamw" and config.params()["rest.lr"] == pytest.approx(3e-4)
    assert config.params()["rest.lr_ratio"] == 0.015 and config.params()["rest.betas"] == (0.9, 0.95)


def muon_adamw_by_hand(config: RunConfig, data, steps: int, head_to_muon=False) -> dict:
    """Muon's README recipe written out: torch.optim.Muon on the hidden matrices, AdamW on the rest."""
    problem = resolve_problem(config.problem)
    torch.manual_seed(config.seed)
    model = problem.build_model(data.info)  # Flatten, Linear(784, 128), ReLU, Linear(128, 10)
    hidden = [model[1].weight, model[3].weight] if head_to_muon else [model[1].weight]
    others = [p for p in model.parameters() if all(p is not h for h in hidden)]
    muon = torch.optim.Muon(hidden, lr=config.lr, weight_decay=0.01)
    adamw = torch.optim.AdamW(others, lr=config.lr * 0.015, betas=(0.9, 0.95), weight_decay=0.01)
    loss_fn, batches = LOSSES[problem.default_loss][0], reference_batches(config, data)
    for _ in range(steps):
        muon.zero_grad(set_to_none=True)
        adamw.zero_grad(set_to_none=True)
        x, y = next(batches)
        loss_fn(model(x), y).backward()
        muon.step()
        adamw.step()
    return model.state_dict()


def test_muon_with_adamw_on_the_rest_equals_the_hand_written_loop(mnist_dir):
    config = RunConfig(problem="mnist_mlp", optimizer="muon", lr=0.02, steps=3, seed=0)
    data = load_data(config.resolved(), data_dir=mnist_dir)
    history = train(config, data=data)
    ours = history.model.state_dict()
    theirs = muon_adamw_by_hand(config, data, steps=3)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)  # exactly, every weight
    assert not all(torch.equal(ours[name], value)  # the test can tell a different split apart
                   for name, value in muon_adamw_by_hand(config, data, 3, head_to_muon=True).items())
    assert history.step_metrics["lr"] == [0.02] * 3  # param_groups[0]: Muon's


def test_a_split_optimizer_is_one_optimizer_to_schedules_and_checkpoints():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = build_optimizer(model, "muon", 0.02, {}, {"optimizer": "adamw", "lr_ratio": 0.5})
    assert isinstance(optimizer, SplitOptimizer)
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("matrices", 0.02), ("rest", 0.01)]
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    schedule.step()  # scales both groups alike: the ratio holds
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.005]
    assert [g["lr"] for g in optimizer.parts["rest"].param_groups] == [0.005]
    saved = optimizer.state_dict()
    assert set(saved) == {"matrices", "rest"} and saved["rest"]["state"]
    optimizer.load_state_dict(saved)


@pytest.mark.slow
def test_muon_runs_from_the_command_line_and_in_a_sweep(mnist_dir, tmp_path, tracking_uri, capsys, monkeypatch):
    from optimstudy.cli import main

    # the two refusals in process (the command's code and message, without a process's start-up; what
    # `optimstudy` exits with is main()'s return, test_exit_codes.py runs such refusals as processes)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTIMSTUDY_DATA_DIR", mnist_dir)
    assert main(["run", "--problem", "mnist_mlp", "--optimizer", "torch.optim:Muon", "--lr", "0.02", "--steps", "5",
                 "--tracking-uri", tracking_uri]) == 2
    failed = capsys.readouterr().err
    assert "takes only matrices" in failed and "Traceback" not in failed, failed
    assert main(["run", "--problem", "linreg", "--optimizer", "muon", "--lr", "0.02", "--steps", "5",
                 "--tracking-uri", tracking_uri]) == 2
    no_hidden = capsys.readouterr().err
    assert "no hidden matrices" in no_hidden and "Traceback" not in no_hidden, no_hidden
    assert not (tmp_path / "mlruns").exists()  # nothing written
    # the run and the sweep in process too: their subject is what Muon trains and records
    result = in_process("run", "--problem", "mnist_mlp", "--optimizer", "torch.optim:Muon", "--lr", "0.02", "--steps",
                        "20", "--rest", "optimizer=adamw", "--rest", "lr=3e-4", "--rest", "betas=0.9,0.95",
                        "--tracking-uri", tracking_uri, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
    from mlflow import MlflowClient

    params = MlflowClient(tracking_uri).get_run(run_id).data.params
    assert (params["rest.optimizer"], params["rest.lr"], params["rest.betas"]) == ("adamw", "0.0003", "(0.9, 0.95)")

    (tmp_path / "muon.toml").write_text(textwrap.dedent("""
        name = "muon-grid"
        problem = "mnist_mlp"
        steps = 20
        [optimizers.muon]
        lr = [0.01, 0.02]
        [optimizers.muon-fixed-rest]
        optimizer = "torch.optim:Muon"
        lr = [0.02]
        rest = { optimizer = "adam", lr = 1e-3 }
    """))
    swept = in_process("sweep", "muon.toml", "--json", cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    summary = json.loads(swept.stdout.strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 3 and summary["trials"]["failed"] == 0
    from optimstudy.tracking.reader import load_runs

    runs = load_runs(summary["tracking_uri"], experiments=["muon-grid"], with_metrics=False)
    trials = runs[runs["parent_run_id"] == summary["parent_run_id"]]
    assert sorted(zip(trials["lr"].astype(float), trials["rest.optimizer"], trials["rest.lr"].astype(float))) == [
        (0.01, "adamw", pytest.approx(1.5e-4)), (0.02, "adam", 1e-3), (0.02, "adamw", pytest.approx(3e-4))]


def test_a_bad_rest_in_a_spec_names_its_key(tmp_path):
    from optimstudy.sweep.spec import SpecError
    from optimstudy.sweep.spec_reader import load_spec

    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\nproblem = "regression_mlp"\nsteps = 5\n[optimizers.muon]\nlr = [0.02]\n'
                    'rest = { optimizer = "adamw" }\n')
    with pytest.raises(SpecError, match=r"key 'optimizers.muon.rest' \(line 6\): rest needs exactly one of lr"):
        load_spec(path)


# ---- learning-rate-free: one lr, no lr axis --------------------------------------------------

@pytest.mark.slow
def test_prodigy_at_lr_1_runs_in_a_sweep_without_an_edge_warning(tmp_path):
    (tmp_path / "lr_free.toml").write_text(textwrap.dedent("""
        name = "lr-free"
        problem = "regression_mlp"
        steps = 40
        [optimizers.prodigy]
        optimizer = "prodigyopt:Prodigy"
        lr = [1.0]                  # its own step-size estimate, times 1
        [optimizers.adam]
        lr = [0.0001, 0.001]        # the best is the largest: an edge, warned about
    """))
    result = in_process("sweep", "lr_free.toml", "--json", cwd=tmp_path)  # its subject is the study, not a process
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 3
    assert {row["optimizer"]: row["lr"] for row in summary["best"]} == {"prodigy": 1.0, "adam": 0.001}
    assert [w.split(":")[0] for w in summary["edge_warnings"]] == ["regression_mlp/adam (lr-free)"]

    # in the figures: a tuning curve flat from k = 1, and a level across the lr axis, not a point on it
    from optimstudy.results import aggregates
    from optimstudy.results.study import Study
    from optimstudy.tracking.reader import load_runs

    study = Study(load_runs(summary["tracking_uri"], experiments=["lr-free"]))
    curves = aggregates.tuning_curves(study.runs, study.main).set_index(["optimizer", "configurations"])
    prodigy = study.main.set_index("optimizer").loc["prodigy"]
    flat = curves.loc[("prodigy", 1), "median"]
    assert flat == curves.loc[("prodigy", 2), "median"] == pytest.approx(prodigy["mean"])
    assert (not curves.loc[("prodigy", 1), "all_tried"]) and curves.loc[("prodigy", 2), "all_tried"]
    assert not curves.loc[("adam", 2), "all_tried"]
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lr_sensitivity", REPO / "src" / "optimstudy" / "report" / "figures" / "lr_sensitivity.py")
    lr_sensitivity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lr_sensitivity)
    (ax,) = lr_sensitivity.figure(study).figure.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    level = lines["prodigy: one lr (1), drawn across"]
    assert list(level.get_xdata()) == [0, 1] and level.get_linestyle() == "--"  # the whole width of the axis
    assert level.get_ydata()[0] == pytest.approx(prodigy["mean"])
    assert list(lines["adam"].get_xdata()) == [0.0001, 0.001]  # the lr curve has adam's lrs only, not 1.0
    summary = study.summary.set_index("optimizer")
    assert summary.loc["prodigy", "lr_range"] == "1 only" and summary.loc["prodigy", "robust_lr_range"] == ""


# ---- each package's own loop: the same weights, step for step -------------------------------

def package_loop(config: RunConfig, data, optimizer_class, arguments: dict, switch_at_the_end=True) -> dict:
    """The loop a package's README shows, written with the package directly: zero_grad, forward, loss,
    backward, step. A train/eval optimizer (Schedule-Free) is switched as its README says: train()
    before training, eval() before each evaluation (here at step 0 and the last step, where train()
    evaluates with eval_every = steps) and train() after it, and eval() for the final weights."""
    problem = resolve_problem(config.problem)
    torch.manual_seed(config.seed)
    model = problem.build_model(data.info)
    optimizer = optimizer_class(model.parameters(), lr=config.lr, **arguments)
    modes = callable(getattr(optimizer, "eval", None))
    loss_fn, batches = LOSSES[problem.default_loss][0], reference_batches(config, data)

    def evaluation():  # what an evaluation does to the weights: the switch there and back
        if modes:
            optimizer.eval()
            optimizer.train()

    model.train()
    if modes:
        optimizer.train()
    evaluation()
    for _ in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        x, y = next(batches)
        loss_fn(model(x), y).backward()
        optimizer.step()
    evaluation()
    if modes and switch_at_the_end:
        optimizer.eval()
    return model.state_dict()


PACKAGE_LOOPS = {  # import path, lr, arguments, and arguments that must give other weights (the test can fail)
    "lion": ("lion_pytorch:Lion", 1e-3, {"weight_decay": 0.1, "betas": (0.9, 0.99)}, {"weight_decay": 0.0}),
    "prodigy": ("prodigyopt:Prodigy", 1.0, {"weight_decay": 0.01}, {"d_coef": 2.0}),
    "schedule-free adamw": ("schedulefree:AdamWScheduleFree", 0.01, {"warmup_steps": 3, "weight_decay": 0.01},
                            {"warmup_steps": 0, "weight_decay": 0.01}),
}


@pytest.mark.parametrize("name", PACKAGE_LOOPS)
def test_the_first_steps_equal_the_packages_own_loop(name):
    path, lr, arguments, other_arguments = PACKAGE_LOOPS[name]
    module, _, class_name = path.partition(":")
    optimizer_class = getattr(pytest.importorskip(module), class_name)
    config = RunConfig(problem="regression_mlp", optimizer=path, lr=lr, opt=arguments, steps=8, eval_every=8,
                       batch_size=32, seed=0)
    data = load_data(config.resolved())
    ours = train(config, data=data).model.state_dict()
    theirs = package_loop(config, data, optimizer_class, arguments)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name  # exactly, every weight
    others = package_loop(config, data, optimizer_class, other_arguments)
    assert not all(torch.equal(ours[key], others[key]) for key in others)
    assert not all(torch.equal(ours[key], value) for key, value in initial_weights(config, data).items())
    if name == "schedule-free adamw":  # the weights train() ends at are the averaged ones, not the sequence's
        sequence = package_loop(config, data, optimizer_class, arguments, switch_at_the_end=False)
        assert not all(torch.equal(ours[key], sequence[key]) for key in sequence)


def initial_weights(config: RunConfig, data) -> dict:
    """The initial weights: eight steps must have moved them."""
    torch.manual_seed(config.seed)
    return resolve_problem(config.problem).build_model(data.info).state_dict()


def test_a_rest_lr_set_by_its_ratio_is_no_argument_of_its_own():
    """Muon's rest.lr is lr x rest.lr_ratio: were it an argument, each lr of a grid would be a configuration of
    its own arguments, and the lr curve, the robust lr range and an edge warning on rest.lr would follow."""
    import pandas as pd

    from optimstudy.results.tables import args_text, argument_edge_warnings

    muon = {"rest.lr": 0.00015, "rest.lr_ratio": 0.015, "rest.optimizer": "adamw"}
    assert args_text(muon) == "rest.lr_ratio=0.015 rest.optimizer=adamw"
    assert args_text({**muon, "rest.lr_ratio": None}) == "rest.lr=0.00015 rest.optimizer=adamw"  # its own lr: kept
    assert args_text({"opt.weight_decay": 0.1, "opt.betas": None}) == "weight_decay=0.1"
    members = pd.DataFrame({"lr": [0.01, 0.02], "rest.lr": [0.00015, 0.0003], "rest.lr_ratio": [0.015, 0.015]})
    row = {"problem": "p", "optimizer": "muon", "experiment": "e", "rest.lr": 0.0003}
    assert argument_edge_warnings(row, members, ["rest.lr"]) == []
    fixed = members.assign(**{"rest.lr_ratio": [None, None]})  # a grid of rest lrs given as such is an axis
    assert "best rest.lr 0.0003 is the largest tried" in argument_edge_warnings(row, fixed, ["rest.lr"])[0]


FORK_AFTER_THE_CHECK = """
import os, sys, time, torch
from optimstudy.problems.optimizers import optimizer_arguments
torch.set_num_threads(2)  # as a sweep's parent on a machine of 2 cores or more
optimizer_arguments("muon", {}, lr=0.02, rest={"optimizer": "adamw", "lr_ratio": 0.015})  # a spec's check
child = os.fork()
if child == 0:  # a sweep worker: its first parallel op (the data's normalization)
    torch.rand(2000, 784).sub(0.1).div(0.3).sum()
    os._exit(0)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    if os.waitpid(child, os.WNOHANG)[0]:
        sys.exit(0)
    time.sleep(0.05)
os.kill(child, 9)
sys.exit("the forked child hung")
"""


def test_checking_muon_before_a_sweep_forks_leaves_its_workers_able_to_run():
    """Muon's check step (a bfloat16 matmul) once started OpenMP's thread pool in the sweep's parent;
    every forked worker then hung at its first parallel op. A fresh interpreter: pytest's own may have
    started the pool already."""
    import subprocess
    import sys

    if torch.get_num_threads() < 2 and (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no thread pool to inherit")
    result = subprocess.run([sys.executable, "-c", FORK_AFTER_THE_CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_lenet_gives_muon_two_hidden_matrices_where_the_mnist_cnn_has_none():
    """Why experiments/modern_optimizers.toml trains mnist_lenet: mnist_cnn's filters are 4-D and its one
    Linear is the head, so torch's Muon would train nothing there."""
    from optimstudy.problems.registry import cnn, lenet

    model = lenet()
    matrices, rest = split_parameters(model)
    assert [tuple(m.shape) for m in matrices] == [(120, 400), (84, 120)]
    assert {id(model[0].weight), id(model[11].weight)} <= {id(p) for p in rest}  # the filters, the head: AdamW's
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert split_parameters(cnn())[0] == []
