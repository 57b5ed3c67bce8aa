"""The lessons of the training sequence, as tests: measure, diagnose, update."""
import math

import pytest
import torch

from optimstudy import RunConfig, train
from optimstudy.problems.losses import LOSSES, lesson_numbers
from optimstudy.problems.registry import mlp


def test_mean_error_cancels_while_mse_does_not():
    numbers = lesson_numbers()
    assert numbers["mean_error"] == 0.0  # +2 and -2 cancel
    assert numbers["mse"] == 4.0  # (2^2 + 2^2) / 2


def test_cross_entropy_punishes_confident_wrong_answers():
    numbers = lesson_numbers()
    assert numbers["cross_entropy_95_sure_wrong"] == pytest.approx(-math.log(0.05), rel=1e-9)  # 3.00
    assert numbers["cross_entropy_55_sure_wrong"] == pytest.approx(-math.log(0.45), rel=1e-9)  # 0.80
    assert numbers["cross_entropy_95_sure_wrong"] > 3 * numbers["cross_entropy_55_sure_wrong"]
    assert numbers["cross_entropy_95_sure_right"] == pytest.approx(-math.log(0.95), rel=1e-9)


def _batch(seed=0, n=32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_backward_computes_gradients_and_changes_no_weight():
    torch.manual_seed(0)
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _batch()
    LOSSES["cross_entropy"][0](model(x), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_sgd_step_is_exactly_w_minus_lr_times_g():
    torch.manual_seed(0)
    model = mlp()
    lr = 0.125  # a power of two: lr * g is exact, so any rounding order gives the same bits
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = _batch()
    LOSSES["cross_entropy"][0](model(x), y).backward()
    expected = [(p - lr * p.grad).detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(torch.equal(e, p) for e, p in zip(expected, model.parameters()))


def test_without_zero_grad_gradients_add_up():
    torch.manual_seed(0)
    model = mlp()
    loss_fn = LOSSES["cross_entropy"][0]
    batches = [_batch(seed) for seed in range(3)]
    singles = []
    for x, y in batches:
        model.zero_grad()
        loss_fn(model(x), y).backward()
        singles.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad()
    for x, y in batches:  # k backward passes, no zero_grad in between
        loss_fn(model(x), y).backward()
    for i, p in enumerate(model.parameters()):
        assert torch.allclose(p.grad, sum(single[i] for single in singles), atol=1e-6)


def test_accumulating_k_batches_equals_one_k_times_larger_batch():
    small = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.05, batch_size=16, accumulate=4, steps=12))
    large = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.05, batch_size=64, steps=12))
    # the same examples in the same order (12 steps stay within the first epoch): 4 micro-batches
    # of 16 are one batch of 64
    assert small.step_metrics["train_loss"] == pytest.approx(large.step_metrics["train_loss"], rel=1e-5)
    assert small.step_metrics["grad_norm"] == pytest.approx(large.step_metrics["grad_norm"], rel=1e-4)
