"""The optimizers people compare today, against their authors' own loops: Schedule-Free (train/eval
modes), Muon with AdamW on the rest (parameter groups by rule), learning-rate-free Prodigy."""
import json
import textwrap

import pytest
import torch
from torch import nn

from optimstudy import RunConfig, UsageError, train
from optimstudy.data import Batches
from optimstudy.losses import LOSSES
from optimstudy.parameter_groups import SplitOptimizer, build_optimizer, split_parameters
from optimstudy.problems import resolve_problem
from optimstudy.training import evaluate, load_data


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
def test_muon_runs_from_the_command_line_and_in_a_sweep(cli, mnist_dir, tmp_path, tracking_uri):
    env = {"OPTIMSTUDY_DATA_DIR": mnist_dir}
    failed = cli("run", "--problem", "mnist_mlp", "--optimizer", "torch.optim:Muon", "--lr", "0.02", "--steps", "5",
                 "--tracking-uri", tracking_uri, cwd=tmp_path, env=env, check_exit=2)
    assert "takes only matrices" in failed.stderr and "Traceback" not in failed.stderr
    no_hidden = cli("run", "--problem", "linreg", "--optimizer", "muon", "--lr", "0.02", "--steps", "5",
                    "--tracking-uri", tracking_uri, cwd=tmp_path, env=env, check_exit=2)
    assert "no hidden matrices" in no_hidden.stderr and "Traceback" not in no_hidden.stderr
    assert not (tmp_path / "mlruns").exists()  # nothing written
    result = cli("run", "--problem", "mnist_mlp", "--optimizer", "torch.optim:Muon", "--lr", "0.02", "--steps", "20",
                 "--rest", "optimizer=adamw", "--rest", "lr=3e-4", "--rest", "betas=0.9,0.95",
                 "--tracking-uri", tracking_uri, "--json", cwd=tmp_path, env=env, check_exit=0)
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
    swept = cli("sweep", "muon.toml", "--json", cwd=tmp_path, env=env, check_exit=0)
    summary = json.loads(swept.stdout.strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 3 and summary["trials"]["failed"] == 0
    from optimstudy.store import load_runs

    runs = load_runs(summary["tracking_uri"], experiments=["muon-grid"], with_metrics=False)
    trials = runs[runs["parent_run_id"] == summary["parent_run_id"]]
    assert sorted(zip(trials["lr"].astype(float), trials["rest.optimizer"], trials["rest.lr"].astype(float))) == [
        (0.01, "adamw", pytest.approx(1.5e-4)), (0.02, "adam", 1e-3), (0.02, "adamw", pytest.approx(3e-4))]


def test_a_bad_rest_in_a_spec_names_its_key(tmp_path):
    from optimstudy.spec import SpecError, load_spec

    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\nproblem = "regression_mlp"\nsteps = 5\n[optimizers.muon]\nlr = [0.02]\n'
                    'rest = { optimizer = "adamw" }\n')
    with pytest.raises(SpecError, match=r"key 'optimizers.muon.rest' \(line 6\): rest needs exactly one of lr"):
        load_spec(path)


# ---- learning-rate-free: one lr, no lr axis --------------------------------------------------

@pytest.mark.slow
def test_prodigy_at_lr_1_runs_in_a_sweep_without_an_edge_warning(cli, tmp_path):
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
    result = cli("sweep", "lr_free.toml", "--json", cwd=tmp_path, check_exit=0)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 3
    assert {row["optimizer"]: row["lr"] for row in summary["best"]} == {"prodigy": 1.0, "adam": 0.001}
    assert [w.split(":")[0] for w in summary["edge_warnings"]] == ["regression_mlp/adam (lr-free)"]
