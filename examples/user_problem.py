"""A complete user problem in one file: own data generator, own model, no change to optimstudy.

    cd examples        # or wherever this file is: the current folder is importable
    optimstudy run --problem user_problem:blobs --optimizer adam --lr 1e-3 --steps 500
    optimstudy sweep blobs.toml --workers 2     # with problem = "user_problem:blobs" in the spec
    optimstudy report --experiment blobs
"""
import torch
from torch import nn

from optimstudy import Problem


def three_blobs(generator):
    """600 points around three centres; `generator` is seeded by split_seed, so every run sees the same data."""
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    labels = torch.randint(0, 3, (600,), generator=generator)
    return centres[labels] + 0.6 * torch.randn(600, 2, generator=generator), labels  # (x, y): 20% held out as test


def wide_mlp(data):
    """The model factory is told the data: data.input_shape, data.input_size, data.num_classes, data.outputs."""
    return nn.Sequential(nn.Linear(data.input_size, 256), nn.ReLU(), nn.Linear(256, data.outputs))


blobs = Problem(data=three_blobs, make_model=wide_mlp, task="classification",
                target=("val_accuracy", 0.95),  # time to target on the report
                description="three Gaussian blobs, a 2-256-3 MLP")
