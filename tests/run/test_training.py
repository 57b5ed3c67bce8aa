"""The loop, problems, optimizers and data: fast, on CPU."""
import json

import pytest
import torch

from optimstudy import RunConfig, UsageError, train
from optimstudy.problems.data import load_problem_data
from optimstudy.problems.optimizers import OPTIMIZERS, optimizer_arguments, parse_opt
from optimstudy.problems.registry import PROBLEMS

GENERATED = [name for name, p in PROBLEMS.items() if p.dataset in ("linreg", "nonlinear", "valley")]
IMAGES = [name for name, p in PROBLEMS.items() if p.dataset == "MNIST"]


def test_same_seed_gives_the_identical_curve():
    config = RunConfig(problem="regression_mlp", optimizer="adam", lr=0.01, steps=60, seed=3)
    first, second = train(config), train(config)
    assert first.step_metrics["train_loss"] == second.step_metrics["train_loss"]
    other = train(RunConfig(problem="regression_mlp", optimizer="adam", lr=0.01, steps=60, seed=4))
    assert other.step_metrics["train_loss"] != first.step_metrics["train_loss"]


def test_huge_lr_diverges_without_a_crash():
    history = train(RunConfig(problem="linreg", optimizer="sgd", lr=1000.0, steps=500))
    assert history.diverged and 1 <= history.diverged_at_step < 500
    assert history.steps[-1] == history.diverged_at_step
    assert history.final["excess_loss"] is None  # not finite: reported as null, never NaN in JSON


def test_linreg_reaches_the_least_squares_optimum():
    history = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=2000, batch_size=64))
    assert not history.diverged
    assert 0 <= history.final["excess_loss"] < 1e-3


def test_training_with_mean_error_fails_while_mse_succeeds():
    broken = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=800, loss="mean_error"))
    good = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=800, loss="mse"))
    assert good.final["excess_loss"] < 1e-3
    # the signed error keeps "improving" (falls below zero) while the real error explodes
    assert broken.step_metrics["train_loss"][-1] < 0
    assert broken.final["excess_loss"] > 100


@pytest.mark.parametrize("problem", GENERATED)
def test_every_generated_problem_lowers_its_loss(problem):
    history = train(RunConfig(problem=problem, optimizer="adam", lr=0.01, steps=80, batch_size=32))
    losses = history.step_metrics["train_loss"]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


@pytest.mark.parametrize("problem", IMAGES)
def test_every_mnist_problem_lowers_its_loss(problem, mnist_dir):
    history = train(RunConfig(problem=problem, optimizer="adam", lr=1e-3, steps=40, batch_size=32),
                    data_dir=mnist_dir)
    losses = history.step_metrics["train_loss"]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


def test_mnist_loads_through_torchvision_from_the_fixture(mnist_dir):
    data = load_problem_data("mnist", split_seed=0, val_fraction=0.0625, device="cpu", data_dir=mnist_dir)
    assert data.sizes() == {"train": 7500, "val": 500, "test": 2000}
    assert data.train.x.shape[1:] == (1, 28, 28) and data.train.x.dtype == torch.float32
    assert abs(float(data.train.x.mean())) < 0.1 and 0.9 < float(data.train.x.std()) < 1.1  # normalized
    assert set(data.test.y.unique().tolist()) == set(range(10))
    train_images = {row.numpy().tobytes() for row in data.train.x.flatten(1)}
    assert not any(row.numpy().tobytes() in train_images for row in data.val.x.flatten(1))  # disjoint


def test_validation_split_is_fixed_by_split_seed_not_seed():
    a = load_problem_data("linreg", split_seed=0, val_fraction=0.1, device="cpu")
    b = load_problem_data("linreg", split_seed=0, val_fraction=0.1, device="cpu")
    c = load_problem_data("linreg", split_seed=1, val_fraction=0.1, device="cpu")
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)


def test_every_registered_optimizer_trains():
    for name in OPTIMIZERS:  # a model with a hidden layer: Muon trains hidden matrices only, linreg has none
        history = train(RunConfig(problem="regression_mlp", optimizer=name, lr=0.01, steps=30))
        assert len(history.step_metrics["train_loss"]) == 30, name


def test_optimizer_by_import_path_and_typed_opt_values():
    config = RunConfig(problem="linreg", optimizer="torch.optim:Adam", lr=0.01, steps=5,
                       opt=parse_opt(["betas=0.8,0.9", "amsgrad=true", "eps=1e-6"]))
    assert config.opt == {"betas": (0.8, 0.9), "amsgrad": True, "eps": 1e-6}
    assert train(config).steps[-1] == 5


@pytest.mark.parametrize("bad", [
    dict(problem="mnist_mlpp"), dict(optimizer="adamm"), dict(loss="cross_entropy", problem="linreg"),
    dict(lr=0.0), dict(lr=-1.0), dict(batch_size=0), dict(steps=-5), dict(epochs=-1.0),
    dict(optimizer="adam", opt={"momentum": 0.9}), dict(schedule="linear"), dict(seed=1.5),
])
def test_bad_config_is_a_usage_error_naming_the_value(bad):
    with pytest.raises(UsageError) as error:
        RunConfig(**bad)
    assert any(str(value) in str(error.value) for value in bad.values())


def test_missing_device_is_a_usage_error_naming_what_is_available():
    with pytest.raises(UsageError, match="available: cpu"):
        RunConfig(problem="linreg", device="cuda:7").resolved()


def test_optimizer_defaults_are_the_registry_entry():
    assert optimizer_arguments("nesterov", {}) == {"momentum": 0.9, "nesterov": True}
    assert optimizer_arguments("momentum", {"momentum": 0.5}) == {"momentum": 0.5}


def test_no_zero_grad_makes_the_gradient_norm_grow(mnist_dir):
    bug = train(RunConfig(problem="mnist_mlp", optimizer="sgd", lr=0.01, steps=60, zero_grad=False),
                data_dir=mnist_dir)
    norms = bug.step_metrics["grad_norm"]
    assert norms[-1] > 5 * norms[0]  # the stale gradients pile up
    assert sum(norms[-10:]) > 2 * sum(norms[:10])


def test_run_json_and_summary(cli, tmp_path):
    result = cli("run", "--problem", "linreg", "--lr", "0.1", "--steps", "300", "--no-track", "--json",
                 cwd=tmp_path, check_exit=0)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["run_id"] is None and summary["steps"] == 300 and summary["diverged"] is False
    assert set(summary["final"]) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
                                     "test_accuracy", "excess_loss"}
    assert summary["final"]["val_accuracy"] is None and summary["final"]["excess_loss"] < 0.01
    assert "300 steps" in result.stderr
    assert not (tmp_path / "mlruns").exists()  # --no-track writes no store


def test_list_commands(tmp_path):
    from helpers import in_process  # the listings are the subject, not a process: one new process each cost ~3 s

    for what, expected in (("problems", "target=val_accuracy 0.95"), ("optimizers", "nesterov"), ("losses", "hinge"),
                           ("schedules", "warmup_cosine")):
        listed = in_process("list", what, cwd=tmp_path)
        assert listed.returncode == 0 and expected in listed.stdout, listed.stderr[-2000:]


def test_fashion_mnist_loads_from_debians_package(tmp_path):
    from helpers import missing

    from optimstudy.problems.data import DEBIAN_FASHION_MNIST

    if not DEBIAN_FASHION_MNIST.is_dir():
        missing("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    data = load_problem_data("fashion_mnist", split_seed=0, val_fraction=0.0625, device="cpu", data_dir=tmp_path)
    assert data.sizes() == {"train": 56250, "val": 3750, "test": 10000}  # the full official set
    assert sorted(p.name for p in (tmp_path / "FashionMNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


# ---- full batches: the split itself, no per-step gather ----------------------------------------

def test_a_full_batch_is_the_split_itself_and_a_minibatch_a_copy():
    from optimstudy.problems.data import Split
    from optimstudy.run.batches import Batches

    split = Split(torch.randn(12, 3), torch.randn(12))
    whole = Batches(split, 100, torch.Generator().manual_seed(0))
    for _ in range(3):  # every step, and for every micro-batch of an accumulated step
        x, y = next(whole)
        assert x is split.x and y is split.y
    x, y = next(Batches(split, 5, torch.Generator().manual_seed(0)))
    assert x.data_ptr() != split.x.data_ptr() and len(y) == 5


def test_every_loss_is_a_mean_over_rows_so_a_full_batch_needs_no_order():
    """Why a full batch may skip the shuffle: each loss in LOSSES gives the same value whatever the row order."""
    from optimstudy.problems.losses import LOSSES

    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(64, generator=generator)
    targets = {"regression": torch.randn(64, generator=generator),
               "classification": torch.randint(0, 10, (64,), generator=generator),
               "binary": torch.randint(0, 2, (64,), generator=generator).float() * 2 - 1}
    for name, (loss_fn, tasks) in LOSSES.items():
        for task in tasks:
            output = torch.randn(64, 10 if task == "classification" else 1, generator=generator)
            y = targets[task]
            assert torch.allclose(loss_fn(output, y), loss_fn(output[order], y[order]), rtol=1e-5, atol=1e-6), \
                (name, task)


@pytest.mark.parametrize("settings", [
    dict(problem="linreg", optimizer="sgd", lr=0.1, val_fraction=0),
    dict(problem="linreg", optimizer="sgd", lr=0.1, loss="mae", accumulate=2),
    dict(problem="regression_mlp", optimizer="adam", lr=0.01, clip_grad_norm=1.0),
])
def test_a_full_batch_curve_equals_the_gathered_one(monkeypatch, settings):
    """The old path gathered the whole split in a fresh order every step: the same curve up to summation order."""
    import optimstudy.run.training
    from optimstudy.run.batches import Batches

    config = RunConfig(**settings, steps=15, batch_size=100_000, threads=1)
    now = train(config)

    class Gathered(Batches):  # the path every full batch took before: a shuffled copy per micro-batch
        __next__ = Batches.gathered

    monkeypatch.setattr(optimstudy.run.training, "Batches", Gathered)
    before = train(config)
    for metric in ("train_loss", "grad_norm", "update_norm"):
        assert torch.allclose(torch.tensor(now.step_metrics[metric]), torch.tensor(before.step_metrics[metric]),
                              rtol=1e-4, atol=1e-7, equal_nan=True), metric  # update_norm: NaN off its cadence
    assert len(now.step_metrics["train_loss"]) == 15


def test_default_evaluations_are_about_ten_a_run_at_full_batch():
    from optimstudy.run.training import default_eval_every

    for val_fraction in (0, 0.1):  # an epoch is one step: evaluating each would be one evaluation per step
        history = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=100, batch_size=100_000,
                                  val_fraction=val_fraction, threads=1))
        assert [e["step"] for e in history.evals] == list(range(0, 101, 10)), val_fraction
    # minibatches as before: with a validation split, each epoch or tenth of the run, whichever is more often;
    # without one, each epoch, and at most every tenth of the run in runs of more than 10 epochs
    assert default_eval_every(585, 117, has_val=True) == 59 and default_eval_every(3510, 117, has_val=True) == 117
    assert default_eval_every(351, 117, has_val=False) == 117 and default_eval_every(3510, 117, has_val=False) == 351
    assert default_eval_every(7, 1, has_val=False) == 1
