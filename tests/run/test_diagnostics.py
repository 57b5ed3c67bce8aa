"""The fused per-step diagnostics against a straightforward reference: same numbers, step by step.

The reference is what anyone would write first: `.item()` every step, one vector_norm per
tensor, a clone of every weight before the step and an explicit subtraction after it.
"""
import math
from dataclasses import replace

import pytest
import torch

from optimstudy import RunConfig, train
from optimstudy.problems.registry import resolve_problem
from optimstudy.run.diagnostics import StepRecorder
from optimstudy.run.loggers import NullLogger
from optimstudy.run.training import History, load_data, set_up

PER_STEP = ("train_loss", "grad_norm", "update_norm", "lr")


def reference_curves(config: RunConfig) -> dict[str, list[float]]:
    """The same run as train(), with every diagnostic computed the plain way."""
    config = config.resolved()
    problem = resolve_problem(config.problem)
    run = set_up(config, problem, load_data(config, problem))
    curves = {name: [] for name in PER_STEP}
    for _ in range(run.n_steps):
        if config.zero_grad:
            run.optimizer.zero_grad(set_to_none=True)
        losses = []
        for _ in range(config.accumulate):
            x, y = next(run.batches)
            loss = run.loss_fn(run.model(x), y)
            (loss / config.accumulate).backward()
            losses.append(loss.item())
        grads = [p.grad for p in run.params if p.grad is not None]
        grad_norm = math.sqrt(sum(torch.linalg.vector_norm(g.double()).item() ** 2 for g in grads))
        if config.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(run.params, config.clip_grad_norm)
        before = [p.detach().clone() for p in run.params]
        curves["lr"].append(run.optimizer.param_groups[0]["lr"])
        run.optimizer.step()
        update_norm = math.sqrt(sum(torch.linalg.vector_norm((b - p.detach()).double()).item() ** 2
                                    for b, p in zip(before, run.params)))
        curves["train_loss"].append(sum(losses) / len(losses))
        curves["grad_norm"].append(grad_norm)
        curves["update_norm"].append(update_norm)
    return curves


@pytest.mark.parametrize("settings", [
    dict(optimizer="sgd", lr=0.05),
    dict(optimizer="adam", lr=0.01),
    dict(optimizer="momentum", lr=0.02, accumulate=3),
    dict(optimizer="adam", lr=0.05, clip_grad_norm=0.5),
    dict(optimizer="sgd", lr=0.01, zero_grad=False),
], ids=["sgd", "adam", "momentum-accumulate", "adam-clipped", "sgd-no-zero-grad"])
def test_recorded_diagnostics_equal_the_reference(settings):
    config = RunConfig(problem="regression_mlp", steps=120, batch_size=16, seed=1, update_norm_every=1, **settings)
    history = train(config)  # 120 steps: two full flushes of 50 and a short one of 20
    expected = reference_curves(config)
    assert history.steps == list(range(1, 121))
    for name in PER_STEP:
        assert history.step_metrics[name] == pytest.approx(expected[name], rel=2e-5, abs=1e-9), name
    if "clip_grad_norm" in settings:  # the clip acted: the recorded norm is the one before clipping
        assert max(history.step_metrics["grad_norm"]) > settings["clip_grad_norm"]


def test_traced_weights_are_the_weights_after_each_step():
    config = RunConfig(problem="valley", optimizer="sgd", lr=0.01, steps=60)
    history = train(config)
    config = config.resolved()
    problem = resolve_problem(config.problem)
    run = set_up(config, problem, load_data(config, problem))
    for step in range(60):
        run.optimizer.zero_grad(set_to_none=True)
        x, y = next(run.batches)
        run.loss_fn(run.model(x), y).backward()
        run.optimizer.step()
        weights = run.model.weight.detach().flatten().tolist()
        assert [history.step_metrics["w1"][step], history.step_metrics["w2"][step]] == pytest.approx(weights)


def test_a_parameter_without_a_gradient_counts_as_zero_and_an_interrupted_step_is_dropped():
    used, late = torch.nn.Parameter(torch.tensor([3.0, 4.0])), torch.nn.Parameter(torch.ones(2))
    recorder = StepRecorder([used, late], diverge_factor=100.0)
    optimizer = torch.optim.SGD([used, late], lr=0.5)
    for step in range(3):
        optimizer.zero_grad(set_to_none=True)
        loss = (used * (used if step != 1 else 0 * used)).sum() + (late.sum() if step == 2 else 0)
        loss.backward()  # `late` has a gradient at the third step only; the second step's gradient is zero
        recorder.gradients([loss.detach()])
        optimizer.step()
        recorder.update(0.5)
    recorder.gradients([torch.tensor(1.0)])  # interrupted before its update: not a finished step
    history = History(config=None)
    assert recorder.flush(history, NullLogger()) is False
    assert history.steps == [1, 2, 3]
    assert history.step_metrics["grad_norm"] == pytest.approx([10.0, 0.0, math.sqrt(2)])  # |2w| = 10, then w = 0
    assert history.step_metrics["update_norm"] == pytest.approx([5.0, 0.0, 0.5 * math.sqrt(2)])  # lr * |g|
    assert history.step_metrics["train_loss"] == [25.0, 0.0, 2.0]


def test_flush_stops_at_the_first_diverged_step():
    weight = torch.nn.Parameter(torch.ones(1))
    recorder = StepRecorder([weight], diverge_factor=10.0)
    for loss in (2.0, 5.0, 25.0, float("nan")):
        weight.grad = torch.ones(1)
        recorder.gradients([torch.tensor(loss)])
        recorder.update(0.1)
    history = History(config=None)
    assert recorder.flush(history, NullLogger()) is True  # 25 > 10 * max(|2|, 1)
    assert history.steps == [1, 2, 3] and history.diverged_at_step == 3


@pytest.mark.slow
@pytest.mark.parametrize("settings", [
    dict(optimizer="sgd", lr=0.05),
    dict(optimizer="adam", lr=0.01, schedule="cosine", clip_grad_norm=2.0),
], ids=["sgd", "adam-cosine-clipped"])
def test_captured_mode_gives_the_eager_curves(settings):
    """torch.compile over the step (CUDA graphs on a GPU; here inductor's CPU kernels): ~10 s to compile."""
    config = RunConfig(problem="regression_mlp", steps=60, batch_size=16, seed=1, **settings)
    eager, captured = train(config), train(RunConfig(**{**config.__dict__, "compile": True}))
    assert captured.config.compile and captured.steps == eager.steps
    for name in PER_STEP:
        assert captured.step_metrics[name] == pytest.approx(eager.step_metrics[name], rel=1e-4, nan_ok=True), name
    assert captured.final["val_loss"] == pytest.approx(eager.final["val_loss"], rel=1e-4)


def test_compile_must_be_a_bool():
    from optimstudy.errors import UsageError

    with pytest.raises(UsageError, match="compile must be true or false, got 'yes'"):
        RunConfig(problem="linreg", compile="yes")
    assert RunConfig(problem="linreg", compile=True).params()["compile"] is True  # logged with the run


# ---- the update norm's cadence (update_norm_every) --------------------------------------------

class KeptPoints:
    """A logger that keeps what it is given: {metric: [(step, value), ...]}."""
    run_id = None

    def __init__(self):
        self.points = {}

    def log(self, step, metrics):
        pass

    def log_steps(self, steps, columns):
        for name, values in columns.items():
            self.points.setdefault(name, []).extend(zip(steps, values))

    def close(self, status="FINISHED"):
        pass


@pytest.mark.parametrize("settings", [
    dict(optimizer="sgd", lr=0.05),
    dict(optimizer="adam", lr=0.05, accumulate=2, clip_grad_norm=0.5, schedule="cosine"),
], ids=["sgd", "adam-accumulate-clipped-cosine"])
def test_an_update_norm_cadence_records_the_every_step_values_at_its_steps(settings):
    """Every 7th step (7 does not divide the flushes of 50): the same numbers as every step, bit for bit."""
    config = RunConfig(problem="regression_mlp", steps=120, batch_size=16, seed=1, **settings)
    full_logged, sparse_logged = KeptPoints(), KeptPoints()
    full = train(replace(config, update_norm_every=1), full_logged)
    sparse = train(replace(config, update_norm_every=7), sparse_logged)
    measured = list(range(7, 121, 7))
    assert sparse.steps == full.steps == list(range(1, 121))
    for name in ("train_loss", "grad_norm", "lr"):  # every step, whatever the cadence
        assert sparse.step_metrics[name] == full.step_metrics[name], name
        assert sparse_logged.points[name] == full_logged.points[name], name
    update = dict(zip(sparse.steps, sparse.step_metrics["update_norm"]))
    assert [update[s] for s in measured] == [full.step_metrics["update_norm"][s - 1] for s in measured]
    assert all(math.isnan(value) for step, value in update.items() if step % 7)  # not measured: NaN, not 0
    assert sparse_logged.points["update_norm"] == [(s, update[s]) for s in measured]  # logged: the measured steps only
    assert len(full_logged.points["update_norm"]) == 120
    assert sparse.final == full.final  # measuring never moves a weight
    assert sparse.config.params()["update_norm_every"] == 7


def test_a_diverged_flush_keeps_the_update_norms_up_to_the_diverged_step():
    weight = torch.nn.Parameter(torch.ones(1))
    recorder = StepRecorder([weight], diverge_factor=10.0, update_every=2)
    logger = KeptPoints()
    for step, loss in enumerate((2.0, 5.0, 25.0, 3.0, 1.0), start=1):
        weight.grad = torch.ones(1)
        recorder.gradients([torch.tensor(loss)])
        with torch.no_grad():
            weight -= 0.1 * step  # the "step": moves the weight by 0.1 x step
        recorder.update(0.1)
    history = History(config=None)
    assert recorder.flush(history, logger) is True  # 25 > 10 * max(|2|, 1) at step 3
    assert history.steps == [1, 2, 3]
    assert history.step_metrics["update_norm"][1] == pytest.approx(0.2)
    assert math.isnan(history.step_metrics["update_norm"][0]) and math.isnan(history.step_metrics["update_norm"][2])
    assert [step for step, _ in logger.points["update_norm"]] == [2]  # step 4's was measured, but after the divergence


def test_update_norm_every_is_a_positive_integer_in_configs_specs_and_the_key():
    import tomllib

    from optimstudy.errors import UsageError
    from optimstudy.sweep.spec import SpecError, config_key
    from optimstudy.sweep.spec_reader import parse_spec

    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(UsageError, match=f"update_norm_every must be a positive integer, got {bad!r}"):
            RunConfig(problem="linreg", update_norm_every=bad)
    one = RunConfig(problem="linreg", update_norm_every=1)
    assert one.params()["update_norm_every"] == 1
    # it changes what is recorded, not what is trained: one trial whatever its cadence
    assert config_key(one) == config_key(RunConfig(problem="linreg", update_norm_every=25))
    text = 'name = "cadence"\nproblem = "linreg"\nsteps = 5\nupdate_norm_every = {}\n[optimizers.sgd]\nlr = [0.1]\n'
    assert parse_spec(tomllib.loads(text.format(1))).settings["update_norm_every"] == 1
    with pytest.raises(SpecError, match="update_norm_every"):
        parse_spec(tomllib.loads(text.format(0)))


def test_run_refuses_a_bad_update_norm_cadence_with_exit_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).with_name("optimstudy")), "run", "--problem", "linreg", "--steps", "5",
               "--update-norm-every", "0"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "update_norm_every must be a positive integer, got 0" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())
