"""Problems and an optimizer for tests/run/test_stacked.py: models that cannot be stacked, a seed that diverges."""
import torch
from torch import nn

from optimstudy.problems.registry import Problem


class Cubic(nn.Module):
    """(w.x + b)^3: stable from small weights, runaway from large ones. Seed 1 starts 3 times further out."""

    def __init__(self, data):
        super().__init__()
        self.linear = nn.Linear(data.input_size, data.outputs)
        if torch.initial_seed() == 1:  # the run seeds torch with its "init" seed just before building the model
            with torch.no_grad():
                self.linear.weight.mul_(3.0)

    def forward(self, x):
        return self.linear(x) ** 3


class Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot take it."""

    def __init__(self, data):
        super().__init__()
        self.linear = nn.Linear(data.input_size, data.outputs)

    def forward(self, x):
        out = self.linear(x)
        return out if out.sum() > 0 else -out


def _batch_norm(data):
    return nn.Sequential(nn.Linear(data.input_size, 8), nn.BatchNorm1d(8), nn.Linear(8, data.outputs))


def _dropout(data):
    return nn.Sequential(nn.Linear(data.input_size, 8), nn.Dropout(0.5), nn.Linear(8, data.outputs))


seed_one_diverges = Problem("linreg", Cubic, "regression")
branchy = Problem("linreg", Branchy, "regression")
batch_norm = Problem("linreg", _batch_norm, "regression")
dropout = Problem("linreg", _dropout, "regression")


class DeclaredSGD(torch.optim.SGD):
    """A user's optimizer that declares its update elementwise."""
    elementwise = True


class UndeclaredSGD(torch.optim.SGD):
    """The same, undeclared: not stacked."""
