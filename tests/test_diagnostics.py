"""The fused per-step diagnostics against a straightforward reference: same numbers, step by step.

The reference is what anyone would write first: `.item()` every step, one vector_norm per
tensor, a clone of every weight before the step and an explicit subtraction after it.
"""
import math

import pytest
import torch

from optimstudy import RunConfig, train
from optimstudy.diagnostics import StepRecorder
from optimstudy.loggers import NullLogger
from optimstudy.problems import resolve_problem
from optimstudy.training import History, load_data, set_up

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
    config = RunConfig(problem="regression_mlp", steps=120, batch_size=16, seed=1, **settings)
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
        assert captured.step_metrics[name] == pytest.approx(eager.step_metrics[name], rel=1e-4), name
    assert captured.final["val_loss"] == pytest.approx(eager.final["val_loss"], rel=1e-4)


def test_compile_must_be_a_bool():
    from optimstudy.errors import UsageError

    with pytest.raises(UsageError, match="compile must be true or false, got 'yes'"):
        RunConfig(problem="linreg", compile="yes")
    assert RunConfig(problem="linreg", compile=True).params()["compile"] is True  # logged with the run
