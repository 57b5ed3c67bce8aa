"""The optimizers registry: torch class, the defaults the study uses, and a search space.

An entry's `space` maps an argument to (low, high, log): the default Optuna search space
used by sweeps when a spec gives none. Any `torch.optim.Optimizer` subclass can be used by
import path, e.g. `--optimizer mypkg.opt:Lion`.
"""
import importlib
import inspect
from dataclasses import dataclass, field

import torch

from optimstudy.errors import UsageError, near


@dataclass(frozen=True)
class OptimizerSpec:
    cls: type
    defaults: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)  # arg -> (low, high, log)
    description: str = ""


LR_SPACE_SGD = {"lr": (1e-4, 1.0, True)}
LR_SPACE_ADAPTIVE = {"lr": (1e-5, 1e-1, True)}

OPTIMIZERS = {
    "sgd": OptimizerSpec(torch.optim.SGD, {}, LR_SPACE_SGD, "plain gradient descent: w -= lr * g"),
    "momentum": OptimizerSpec(
        torch.optim.SGD, {"momentum": 0.9}, LR_SPACE_SGD, "SGD with heavy-ball momentum 0.9"
    ),
    "nesterov": OptimizerSpec(
        torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, LR_SPACE_SGD,
        "SGD with Nesterov momentum 0.9",
    ),
    "adam": OptimizerSpec(torch.optim.Adam, {}, LR_SPACE_ADAPTIVE, "per-weight steps from gradient moments"),
    "adamw": OptimizerSpec(
        torch.optim.AdamW, {}, LR_SPACE_ADAPTIVE, "Adam with decoupled weight decay (0.01)"
    ),
    "rmsprop": OptimizerSpec(
        torch.optim.RMSprop, {}, LR_SPACE_ADAPTIVE, "per-weight steps from a running mean of g^2"
    ),
    "adagrad": OptimizerSpec(
        torch.optim.Adagrad, {}, {"lr": (1e-4, 1.0, True)}, "per-weight steps from the sum of g^2"
    ),
    "nadam": OptimizerSpec(torch.optim.NAdam, {}, LR_SPACE_ADAPTIVE, "Adam with Nesterov momentum"),
}


def resolve_optimizer_class(name: str) -> type:
    """The torch class for a registry name or a `package.module:Class` path."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name].cls
    if ":" not in name:
        raise UsageError(
            f"unknown optimizer '{name}'{near(name, OPTIMIZERS)}; valid: {', '.join(OPTIMIZERS)}, "
            "or an import path like 'package.module:Class'"
        )
    module_name, _, class_name = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"optimizer '{name}' cannot be imported: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise UsageError(f"optimizer '{name}' is not a torch.optim.Optimizer subclass")
    return cls


def optimizer_arguments(name: str, extra: dict) -> dict:
    """The registry defaults updated with `extra`, checked against the class signature."""
    cls = resolve_optimizer_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]
    for key in extra:
        if key == "lr":
            raise UsageError("optimizer argument 'lr' is set with --lr (or lr = … in a spec), not --opt")
        if key not in accepted:
            raise UsageError(
                f"optimizer '{name}' has no argument '{key}'{near(key, accepted)}; "
                f"valid: {', '.join(a for a in accepted if a != 'lr')}"
            )
    defaults = OPTIMIZERS[name].defaults if name in OPTIMIZERS else {}
    return {**defaults, **extra}


def parse_opt_value(text: str):
    """'0.9' -> 0.9, '10' -> 10, 'true' -> True, '0.9,0.99' -> (0.9, 0.99), 'none' -> None."""
    if "," in text:
        return tuple(parse_opt_value(part) for part in text.split(",") if part.strip())
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_opt(items: list[str]) -> dict:
    """`--opt KEY=VALUE` items into typed keyword arguments."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--opt '{item}' is not KEY=VALUE (e.g. --opt momentum=0.9 --opt betas=0.9,0.99)")
        parsed[key.strip()] = parse_opt_value(value)
    return parsed
