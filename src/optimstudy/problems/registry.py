"""Test problems: data + model + loss + task, one small object, separate from the optimizer (DeepOBS).

Built-in problems live in PROBLEMS; any other is a `Problem` named by import path, exactly
like an optimizer, and every sweep worker imports it again:

    # myproblems.py, in the folder you run optimstudy from
    import torch
    from torch import nn
    from optimstudy.problems.registry import Problem

    def two_blobs(generator):                  # seeded by split_seed: the same data in every run
        x = torch.randn(1200, 2, generator=generator)
        return x, (x[:, 0] + x[:, 1] > 0).long()

    def wide_mlp(data):                        # data.input_shape, data.num_classes, data.outputs
        return nn.Sequential(nn.Linear(data.input_shape[0], 256), nn.ReLU(), nn.Linear(256, data.outputs))

    blobs = Problem(data=two_blobs, make_model=wide_mlp, task="classification", target=("val_accuracy", 0.95))

    $ optimstudy run --problem myproblems:blobs --optimizer adam --lr 1e-3
"""
from dataclasses import dataclass

import torch
from torch import nn

from optimstudy.errors import UsageError, unknown
from optimstudy.facts import BUILTIN_PROBLEMS
from optimstudy.imports import import_made, is_import_path, takes_an_argument

# DataInfo and TorchvisionData are imported from here by users' problem modules
from optimstudy.problems.data import DataInfo, as_torchvision, check_data, least_squares_mse, load_problem_data
from optimstudy.problems.losses import LOSSES

TASKS = ("classification", "binary", "regression")  # integer classes, ±1 labels, real targets
DEFAULT_LOSS = {"classification": "cross_entropy", "binary": "logistic", "regression": "mse"}


@dataclass(frozen=True)
class Problem:
    """Data + model + loss + task (+ a known optimum, a target for time-to-target).

    data: a data set name (a torchvision class such as "KMNIST"; "linreg", "nonlinear", "valley"),
          `TorchvisionData("EMNIST", split="balanced")`, tensors `(x, y)` or `(x, y, x_test, y_test)`,
          or a function `make(generator) -> (x, y)` or `(x, y, x_test, y_test)`; without a test
          split, `test_fraction` of the rows is held out as one (fixed, whatever the split_seed).
    make_model: `make_model(data_info) -> nn.Module`, or a function / nn.Module class with no arguments.
    """
    data: object
    make_model: object
    task: str = "classification"
    default_loss: str | None = None  # None: cross_entropy, logistic or mse, by task
    description: str = ""
    target: tuple | None = None  # ("val_accuracy", 0.95): steps and seconds to reach it are reported
    # (a target names an evaluation curve: val_loss, val_accuracy; train_full_* without a validation split)
    optimum: object = None  # optimum(train_split) -> the lowest training MSE there is; gives excess_loss
    traces_weights: bool = False  # log every weight each step (2-parameter problems)
    test_fraction: float = 0.2  # of the rows, when the data brings no test split

    def __post_init__(self):
        if self.task not in TASKS:
            raise UsageError(f"problem task '{self.task}' is not one of {', '.join(TASKS)}")
        if self.default_loss is None:
            object.__setattr__(self, "default_loss", DEFAULT_LOSS[self.task])
        fits = [name for name, (_, tasks) in LOSSES.items() if self.task in tasks]
        if self.default_loss not in fits:
            raise UsageError(f"problem default_loss '{self.default_loss}' does not apply to a {self.task} task; "
                             f"valid: {', '.join(fits)}")
        if not callable(self.make_model):
            raise UsageError(f"problem make_model must be callable (a function or an nn.Module class), "
                             f"got {self.make_model!r}")
        if self.target is not None and not (
                isinstance(self.target, tuple) and len(self.target) == 2 and isinstance(self.target[0], str)
                and isinstance(self.target[1], (int, float))):
            raise UsageError(f"problem target must be (metric, value), e.g. ('val_accuracy', 0.95); "
                             f"got {self.target!r}")
        if not 0 < self.test_fraction < 1:
            raise UsageError(f"problem test_fraction must lie in (0, 1), got {self.test_fraction}")

    @property
    def has_optimum(self) -> bool:
        return self.optimum is not None

    @property
    def dataset(self) -> str:
        """A short name for the data (a torchvision class, a built-in name, or 'custom')."""
        spec = as_torchvision(self.data)
        if spec is not None:
            return spec.label
        return self.data if isinstance(self.data, str) else getattr(self.data, "__name__", "custom")

    def load_data(self, *, split_seed: int, val_fraction: float, device: str, data_dir=None, name=None,
                  run_seed: int | None = None):
        """Its three splits (train, val, test) as tensors on `device`, read once per process; with
        `run_seed` (a run whose seed varies "data") the train/validation split is drawn from (split_seed, run_seed)."""
        return load_problem_data(self.data, split_seed=split_seed, val_fraction=val_fraction, device=device,
                                 data_dir=data_dir, task=self.task, test_fraction=self.test_fraction, name=name,
                                 run_seed=run_seed)

    def build_model(self, info: DataInfo) -> nn.Module:
        """The model for data shaped as `info`; factories that take no argument are called without it."""
        if takes_an_argument(self.make_model):
            return self.make_model(info)
        return self.make_model()


# ---- built-in models: each takes the data's shape ------------------------------------------

MNIST_INFO = DataInfo((1, 28, 28), 10, 10)


def logreg(data: DataInfo = MNIST_INFO):
    return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, data.outputs))


def mlp(data: DataInfo = MNIST_INFO):
    return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, 128), nn.ReLU(), nn.Linear(128, data.outputs))


def cnn(data: DataInfo = MNIST_INFO):
    channels, height, width = data.input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4), data.outputs),
    )


def lenet(data: DataInfo = MNIST_INFO):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: two conv layers, then two hidden
    matrices (400x120, 120x84) before the head, which is what Muon trains (parameter_groups.py)."""
    channels, height, width = data.input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2), 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, data.outputs),
    )


def linear(data: DataInfo):
    return nn.Linear(data.input_size, data.outputs)


def regression_mlp(data: DataInfo):
    return nn.Sequential(nn.Linear(data.input_size, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, data.outputs))


from optimstudy.facts import VALLEY_START  # noqa: E402  (there for the report, which has no torch)


def valley_model(data: DataInfo):
    model = nn.Linear(data.input_size, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([VALLEY_START]))
    return model


def least_squares(bias: bool):
    """optimum(train) for a linear model: the least-squares training MSE (with or without a bias)."""
    return lambda train: least_squares_mse(train.x, train.y, bias)


def built_in(name: str, data, make_model, description: str, **rest) -> Problem:
    """A built-in problem: its task, loss and target are the ones facts.BUILTIN_PROBLEMS gives the
    report (which reads them without torch), written once there."""
    known = BUILTIN_PROBLEMS[name]
    return Problem(data, make_model, known.task, known.default_loss, description, known.target, **rest)


PROBLEMS = {name: built_in(name, *made) for name, *made in [
    ("mnist_logreg", "mnist", logreg, "MNIST, softmax regression (7.9k weights)"),
    ("mnist_mlp", "mnist", mlp, "MNIST, 784-128-10 MLP (102k weights)"),
    ("mnist_cnn", "mnist", cnn, "MNIST, 2-conv CNN (20k weights)"),
    ("mnist_lenet", "mnist", lenet, "MNIST, LeNet-5: 2 conv + 2 hidden linear layers (62k weights)"),
    ("fashion_logreg", "fashion_mnist", logreg, "Fashion-MNIST, softmax regression"),
    ("fashion_mlp", "fashion_mnist", mlp, "Fashion-MNIST, 784-128-10 MLP"),
    ("fashion_cnn", "fashion_mnist", cnn, "Fashion-MNIST, 2-conv CNN"),
]}
PROBLEMS["linreg"] = built_in(
    "linreg", "linreg", linear,
    "3 standardized features (temperature, price, distance), y = Xw* + noise(0.1); known optimum",
    optimum=least_squares(bias=True))
PROBLEMS["regression_mlp"] = built_in("regression_mlp", "nonlinear", regression_mlp,
                                      "y = sin(2x1) + x2^2/2 + noise(0.1), 2-64-64-1 tanh MLP")
PROBLEMS["valley"] = built_in(
    "valley", "valley", valley_model,
    "2 weights, an ill-conditioned quadratic bowl (curvatures 25:1) for drawing trajectories",
    optimum=least_squares(bias=False), traces_weights=True)


def resolve_problem(name: str) -> Problem:
    """A registry name or `package.module:attribute` (a Problem, or a function returning one)."""
    if name in PROBLEMS:
        return PROBLEMS[name]
    if not is_import_path(name):
        error = unknown("problem", name, PROBLEMS)
        raise UsageError(f"{error}, or an import path like 'package.module:problem'") from None
    expected = "an optimstudy.problems.Problem (or a function with no arguments returning one)"
    problem = import_made(name, "problem", expected, lambda found: isinstance(found, Problem))
    if not isinstance(problem, Problem):
        raise UsageError(f"problem '{name}' is not a Problem (it is a {type(problem).__name__}); expected {expected}")
    try:
        check_data(problem.data)
    except UsageError as error:
        raise UsageError(f"problem '{name}': {error}") from None
    return problem
