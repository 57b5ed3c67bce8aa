"""Loss functions: the "measure" line of the training sequence.

`mean_error` is the lesson's signed average error: a prediction 2 too high and one 2 too
low cancel out, so it reports 0 for a wrong model and can be driven to minus infinity.
It is here so that training with it can be shown to fail.

    >>> from optimstudy.problems.losses import lesson_numbers
    >>> lesson_numbers()["mean_error"], lesson_numbers()["mse"]
    (0.0, 4.0)
"""
import math

import torch
import torch.nn.functional as F


def mean_error(prediction, target):
    """signed average error: +2 and -2 cancel to 0 (the lesson's broken measure)"""
    return (prediction.squeeze(-1) - target).mean()


def mse(prediction, target):
    """mean squared error: every miss counts, big misses most"""
    return F.mse_loss(prediction.squeeze(-1), target)


def mae(prediction, target):
    """mean absolute error"""
    return F.l1_loss(prediction.squeeze(-1), target)


def huber(prediction, target):
    """squared below 1, absolute above: MSE that shrugs at outliers"""
    return F.huber_loss(prediction.squeeze(-1), target, delta=1.0)


def cross_entropy(logits, target):
    """-ln(probability given to the true class): confident wrong answers cost most"""
    return F.cross_entropy(logits, target)


def logistic(score, target):
    """ln(1 + e^(-y·score)) for labels y = ±1: binary cross-entropy on one score"""
    return F.softplus(-target * score.squeeze(-1)).mean()


def hinge(score, target):
    """max(0, 1 - y·score) for labels y = ±1: zero once a point is right by a margin"""
    return F.relu(1 - target * score.squeeze(-1)).mean()


# name -> (function, the tasks it applies to)
LOSSES = {
    "mse": (mse, ("regression", "binary")),
    "mae": (mae, ("regression",)),
    "huber": (huber, ("regression",)),
    "mean_error": (mean_error, ("regression",)),
    "cross_entropy": (cross_entropy, ("classification",)),
    "logistic": (logistic, ("binary",)),
    "hinge": (hinge, ("binary",)),
}

# The lesson's pairs, as (prediction, target): errors +2 and -2.
LESSON_PAIRS = ((6.0, 4.0), (3.0, 5.0))


def lesson_numbers() -> dict:
    """The numbers the lesson quotes, computed by the same loss functions training uses."""
    prediction = torch.tensor([[p] for p, _ in LESSON_PAIRS], dtype=torch.float64)
    target = torch.tensor([t for _, t in LESSON_PAIRS], dtype=torch.float64)

    def ce(p_true: float) -> float:
        # ten classes; the true class gets p_true, the confident wrong one (a 7) the rest
        probs = torch.full((1, 10), 1e-12, dtype=torch.float64)
        probs[0, 3] = p_true
        probs[0, 7] = 1.0 - p_true
        return cross_entropy(probs.log(), torch.tensor([3])).item()

    return {
        "mean_error": mean_error(prediction, target).item(),
        "mse": mse(prediction, target).item(),
        "mae": mae(prediction, target).item(),
        # "95% sure it is a 7" when it is a 3 leaves 5% on the truth; 55% sure leaves 45%
        "cross_entropy_95_sure_wrong": ce(0.05),
        "cross_entropy_55_sure_wrong": ce(0.45),
        "cross_entropy_95_sure_right": ce(0.95),
        "cross_entropy_55_sure_right": ce(0.55),
        "ln": {"-ln(0.05)": -math.log(0.05), "-ln(0.45)": -math.log(0.45)},
    }
