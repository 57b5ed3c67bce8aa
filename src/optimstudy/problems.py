"""The problems registry: a test problem is data + model + default loss (+ a known optimum).

As in DeepOBS, a problem is separate from the optimizer that trains it. To add one, write a
model factory and add a `Problem` to PROBLEMS; `optimstudy list problems` shows it.
"""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Problem:
    dataset: str  # a name that data.load_problem_data knows
    make_model: callable
    task: str  # "classification" or "regression"
    default_loss: str
    description: str
    has_optimum: bool = False  # excess_loss = final training MSE - least-squares MSE
    traces_weights: bool = False  # log every weight each step (2-parameter problems)


def logreg():
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def linear_3():
    return nn.Linear(3, 1)


def regression_mlp():
    return nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


VALLEY_START = (-2.0, 4.0)  # far up the shallow side of the valley; the optimum is near (1, 1)


def valley_model():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([VALLEY_START]))
    return model


PROBLEMS = {
    "mnist_logreg": Problem("mnist", logreg, "classification", "cross_entropy", "MNIST, softmax regression (7.9k weights)"),
    "mnist_mlp": Problem("mnist", mlp, "classification", "cross_entropy", "MNIST, 784-128-10 MLP (102k weights)"),
    "mnist_cnn": Problem("mnist", cnn, "classification", "cross_entropy", "MNIST, 2-conv CNN (20k weights)"),
    "fashion_logreg": Problem("fashion_mnist", logreg, "classification", "cross_entropy", "Fashion-MNIST, softmax regression"),
    "fashion_mlp": Problem("fashion_mnist", mlp, "classification", "cross_entropy", "Fashion-MNIST, 784-128-10 MLP"),
    "fashion_cnn": Problem("fashion_mnist", cnn, "classification", "cross_entropy", "Fashion-MNIST, 2-conv CNN"),
    "linreg": Problem(
        "linreg", linear_3, "regression", "mse",
        "3 standardized features (temperature, price, distance), y = Xw* + noise(0.1); known optimum",
        has_optimum=True,
    ),
    "regression_mlp": Problem(
        "nonlinear", regression_mlp, "regression", "mse", "y = sin(2x1) + x2^2/2 + noise(0.1), 2-64-64-1 tanh MLP"
    ),
    "valley": Problem(
        "valley", valley_model, "regression", "mse",
        "2 weights, an ill-conditioned quadratic bowl (curvatures 25:1) for drawing trajectories",
        has_optimum=True, traces_weights=True,
    ),
}
