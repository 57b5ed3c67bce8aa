"""Parameter groups by rule: the hidden matrices to one optimizer, every other parameter to a second.

Muon (torch.optim.Muon) orthogonalizes a weight matrix's update and takes 2-D parameters only; its
author uses it on the hidden layers' matrices and AdamW on everything else. `rest` names that second
optimizer; the two run as one optimizer object, so the training loop does not change:

    RunConfig(problem="mnist_mlp", optimizer="muon", lr=0.02)   # the registry's rest: AdamW at 0.02 x 0.015
    RunConfig(problem="mnist_mlp", optimizer="torch.optim:Muon", lr=0.02,
              rest={"optimizer": "adamw", "lr": 3e-4, "betas": (0.9, 0.95)})

    $ optimstudy run --optimizer torch.optim:Muon --lr 0.02 --rest optimizer=adamw --rest lr=3e-4

    [optimizers.muon]                                  # in a spec
    lr = [0.01, 0.02, 0.05]
    rest = { optimizer = "adamw", lr_ratio = 0.015 }   # or lr = 3e-4: the same for every lr of the grid

`rest` holds `optimizer`, exactly one of `lr` (its own) or `lr_ratio` (times the main lr), and any
other key as that optimizer's argument. It is logged as params rest.optimizer, rest.lr (the lr it
ran with), rest.lr_ratio, rest.KEY.

The rule, after Muon's README (github.com/KellerJordan/Muon: "embeddings, classifier heads, and
hidden gains/biases should be optimized using standard AdamW"): the hidden matrices are the model's
trainable 2-D parameters, less the output layer's (the last nn.Linear, in module order) and the
embeddings' (nn.Embedding, nn.EmbeddingBag). Two departures from it:
- The first nn.Linear counts as hidden: its input is dense (pixels), not a one-hot lookup as an
  embedding's is; and the two-layer mnist_mlp would otherwise leave Muon nothing to train. (The
  README gives a ConvNet's first conv filter to AdamW.)
- Conv filters (4-D) go to the rest: the README's Muon flattens them to matrices, torch.optim.Muon
  takes 2-D parameters only.
"""
import math

import torch
from torch import nn

from optimstudy.errors import UsageError
from optimstudy.problems.optimizers import (
    OPTIMIZERS,
    OptimizerArgumentError,
    optimizer_arguments,
    resolve_optimizer_class,
)

REST_EXAMPLE = 'rest = { optimizer = "adamw", lr = 3e-4 } (command line: --rest optimizer=adamw --rest lr=3e-4)'
OWN_KEYS = ("optimizer", "lr", "lr_ratio")  # rest's keys that are not the rest optimizer's arguments


def split_parameters(model: nn.Module) -> tuple[list, list]:
    """(hidden matrices, every other trainable parameter), each in the model's parameter order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    not_hidden = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
                  for p in m.parameters()}
    if linears:
        not_hidden |= {id(p) for p in linears[-1].parameters()}  # the output layer
    trainable = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in trainable if p.ndim == 2 and id(p) not in not_hidden]
    return matrices, [p for p in trainable if p.ndim != 2 or id(p) in not_hidden]


class SplitOptimizer(torch.optim.Optimizer):
    """Two torch optimizers as one: `matrices` steps the hidden matrices, `rest` every other parameter.

    Its param_groups are the two optimizers' own group dicts, the matrices' first (each with a "name"),
    so param_groups[0]["lr"] is the main lr, and a schedule (or captured mode's tensor lr) changes the
    lr that each steps with: a schedule scales both alike. Each keeps its own state.
    """

    def __init__(self, matrices: torch.optim.Optimizer, rest: torch.optim.Optimizer):
        self.parts = {"matrices": matrices, "rest": rest}
        for name, part in self.parts.items():
            for group in part.param_groups:
                group["name"] = name
        # the parts' group dicts themselves (add_param_group keeps the dict it is given), not copies
        super().__init__([*matrices.param_groups, *rest.param_groups], {})

    def step(self, closure=None):
        loss = closure() if closure is not None else None  # once, not once per part
        for part in self.parts.values():
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def train(self) -> None:  # Schedule-Free parts switch their weights; the others have nothing to do
        for part in self.parts.values():
            if callable(getattr(part, "train", None)):
                part.train()

    def eval(self) -> None:
        for part in self.parts.values():
            if callable(getattr(part, "eval", None)):
                part.eval()

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])


def build_optimizer(model: nn.Module, name: str, lr: float, opt: dict, rest: dict) -> torch.optim.Optimizer:
    """The run's optimizer: `name` over every trainable parameter, or with `rest`, split by the rule."""
    cls, arguments = resolve_optimizer_class(name), optimizer_arguments(name, opt, rest=rest)
    if not rest:
        return cls([p for p in model.parameters() if p.requires_grad], lr=lr, **arguments)
    matrices, others = split_parameters(model)
    check_hidden_matrices(matrices, name)
    main = cls(matrices, lr=lr, **arguments)
    if not others:
        return main
    rest_name = rest["optimizer"]
    return SplitOptimizer(main, resolve_optimizer_class(rest_name)(
        others, lr=rest_lr(rest, lr), **optimizer_arguments(rest_name, rest_arguments(rest))))


def check_hidden_matrices(matrices: list, name: str, problem: str = "") -> None:
    if not matrices:
        raise UsageError(f"optimizer '{name}' with a rest optimizer: the model{f' of {problem!r}' if problem else ''} "
                         "has no hidden matrices (its 2-D weights, less the output layer's and embeddings'), so it "
                         "would train nothing; give this problem an optimizer of all parameters")


def rest_lr(rest: dict, lr: float) -> float:
    return rest["lr"] if "lr" in rest else lr * rest["lr_ratio"]


def rest_arguments(rest: dict) -> dict:
    return {k: v for k, v in rest.items() if k not in OWN_KEYS}


def check_rest(optimizer: str, rest, lr: float) -> dict:
    """`rest` checked, lists as tuples; {} gives the registry entry's own rest (the 'muon' entry has one),
    and one given replaces it whole."""
    if not isinstance(rest, dict):
        raise UsageError(f"rest must be a table, e.g. {REST_EXAMPLE}; got {rest!r}")
    if not rest:
        return dict(OPTIMIZERS[optimizer].rest) if optimizer in OPTIMIZERS else {}
    rest = {k: tuple(v) if isinstance(v, list) else v for k, v in rest.items()}
    name = rest.get("optimizer")
    if not isinstance(name, str):
        raise UsageError(f"rest needs optimizer = a registry name or 'package.module:Class', e.g. {REST_EXAMPLE}")
    if ("lr" in rest) == ("lr_ratio" in rest):
        given = ", ".join(k for k in ("lr", "lr_ratio") if k in rest) or "neither"
        raise UsageError(f"rest needs exactly one of lr (its own) or lr_ratio (times the main lr), "
                         f"e.g. {REST_EXAMPLE}; got {given}")
    for key in ("lr", "lr_ratio"):
        value = rest.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"rest {key} must be a positive number, got {value!r}")
    try:
        # built once on a matrix and a bias (rest={}: it takes biases, so no matrices-only optimizer here)
        optimizer_arguments(name, rest_arguments(rest), lr=rest_lr(rest, lr), rest={})
    except OptimizerArgumentError as error:
        raise UsageError(f"rest: {error.for_source(None)}") from None
    except UsageError as error:
        raise UsageError(f"rest: {error}") from None
    return rest


def rest_params(rest: dict, lr: float) -> dict:
    """rest.KEY params for a tracking store; rest.lr is the lr the rest ran with, also when given as a ratio."""
    if not rest:
        return {}
    return {f"rest.{k}": v for k, v in sorted({**rest, "lr": rest_lr(rest, lr)}.items())}
