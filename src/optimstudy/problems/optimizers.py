"""The optimizers registry: torch class, the defaults the study uses, and a search space.

An entry's `space` maps an argument to (low, high, log): the default Optuna search space
used by sweeps when a spec gives none. Any `torch.optim.Optimizer` subclass can be used by
import path, e.g. `--optimizer mypkg.opt:Lion` (a module in the current folder included).

Arguments are checked before anything runs, so a bad one is a usage error naming it rather
than a failed trial: first their types against the class's annotations and defaults, then
by building the optimizer once on a dummy parameter and taking one step (its own range
checks, e.g. "Invalid momentum value: -1.0", and optimizers that cannot run in our loop).

    optimizer_arguments("adam", {"betas": (0.9, 0.99)}, lr=1e-3)   # {'betas': (0.9, 0.99)}
    optimizer_arguments("adam", {"betas": "fast"})                 # OptimizerArgumentError
"""
import copy
import inspect
import math
import types
import typing
from dataclasses import dataclass, field

import torch

from optimstudy.errors import UsageError, near
from optimstudy.imports import import_object, is_import_path


@dataclass(frozen=True)
class OptimizerSpec:
    cls: type
    defaults: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)  # arg -> (low, high, log)
    description: str = ""
    rest: dict = field(default_factory=dict)  # an optimizer for what this one does not take (parameter_groups)
    # each element's update depends only on its own gradient history and a shared step count, so a
    # configuration's seeds can train stacked in one model (run/stacked.py); False: it looks across a
    # tensor or across tensors (Muon's orthogonalisation), and stacked seeds would mix
    elementwise: bool = False


LR_SPACE_SGD = {"lr": (1e-4, 1.0, True)}
LR_SPACE_ADAPTIVE = {"lr": (1e-5, 1e-1, True)}

OPTIMIZERS = {
    "sgd": OptimizerSpec(torch.optim.SGD, {}, LR_SPACE_SGD, "plain gradient descent: w -= lr * g",
                         elementwise=True),
    "momentum": OptimizerSpec(
        torch.optim.SGD, {"momentum": 0.9}, LR_SPACE_SGD, "SGD with heavy-ball momentum 0.9", elementwise=True
    ),
    "nesterov": OptimizerSpec(
        torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, LR_SPACE_SGD,
        "SGD with Nesterov momentum 0.9", elementwise=True,
    ),
    "adam": OptimizerSpec(torch.optim.Adam, {}, LR_SPACE_ADAPTIVE, "per-weight steps from gradient moments",
                          elementwise=True),
    "adamw": OptimizerSpec(
        torch.optim.AdamW, {}, LR_SPACE_ADAPTIVE, "Adam with decoupled weight decay (0.01)", elementwise=True
    ),
    "rmsprop": OptimizerSpec(
        torch.optim.RMSprop, {}, LR_SPACE_ADAPTIVE, "per-weight steps from a running mean of g^2", elementwise=True
    ),
    "adagrad": OptimizerSpec(
        torch.optim.Adagrad, {}, {"lr": (1e-4, 1.0, True)}, "per-weight steps from the sum of g^2", elementwise=True
    ),
    "nadam": OptimizerSpec(torch.optim.NAdam, {}, LR_SPACE_ADAPTIVE, "Adam with Nesterov momentum",
                           elementwise=True),
}
if hasattr(torch.optim, "Muon"):  # torch 2.9 and later
    # Muon's own README (github.com/KellerJordan/Muon): Muon at lr 0.02, weight decay 0.01 on the hidden
    # matrices; AdamW at lr 3e-4 (0.015 x Muon's, kept as a ratio so an lr grid moves both), betas
    # (0.9, 0.95), weight decay 0.01 on the rest. torch's own default weight decay for Muon is 0.1.
    OPTIMIZERS["muon"] = OptimizerSpec(
        torch.optim.Muon, {"weight_decay": 0.01}, {"lr": (1e-3, 3e-1, True)},
        "orthogonalized momentum on the hidden matrices; AdamW (lr x 0.015) on the rest",
        rest={"optimizer": "adamw", "lr_ratio": 0.015, "betas": (0.9, 0.95), "weight_decay": 0.01},
    )


# Optimizers named by import path whose update is elementwise (see OptimizerSpec.elementwise): torch's
# own beyond the registry's classes, and the `optimizers` extra's (schedulefree's warmup and averaging
# weights and Lion's sign are per element, from lr and the step count). Not Prodigy or D-Adaptation
# (a global step-size estimate), LAMB (a per-tensor trust ratio), Adafactor (factored moments).
# A user's class declares itself with a class attribute `elementwise = True`.
ELEMENTWISE_PATHS = {
    "torch.optim:RAdam", "torch.optim:Adamax", "torch.optim:Adadelta",
    "schedulefree:AdamWScheduleFree", "schedulefree:SGDScheduleFree", "schedulefree:RAdamScheduleFree",
    "lion_pytorch:Lion",
}


def is_elementwise(name: str) -> bool:
    """Whether optimizer `name` (a registry name or an import path) is known to update each element alone."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name].elementwise
    cls = resolve_optimizer_class(name)
    known = {spec.cls for spec in OPTIMIZERS.values() if spec.elementwise and not spec.defaults}
    return (cls.__dict__.get("elementwise") is True or cls in known
            or f"{cls.__module__.split('.')[0]}:{cls.__name__}" in ELEMENTWISE_PATHS)


def has_modes(optimizer) -> bool:
    """Whether `optimizer` has train()/eval() modes (Schedule-Free: schedulefree, heavyball's SF*).

    Such an optimizer keeps the model's weights at the point its gradients are taken while training;
    eval() moves them to the average that is meant to be evaluated (and saved), train() back.
    """
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


class OptimizerArgumentError(UsageError):
    """A bad optimizer argument. `arguments` names the ones at fault (empty: the optimizer itself).

    `for_source("--opt")` and `for_source("toml")` phrase it the way the user wrote the value.
    """

    def __init__(self, optimizer: str, arguments: tuple, given: dict, reason: str, examples: dict | None = None):
        self.optimizer, self.arguments, self.given, self.reason = optimizer, tuple(arguments), given, reason
        self.examples = examples or {}  # argument -> a valid value, to show how to write one
        super().__init__(self.for_source(None))

    def for_source(self, style: str | None) -> str:
        """style: None (Python keywords), "--opt" (the command line) or "toml" (a spec)."""
        def written(name, value):
            if style == "--opt":
                return f"--opt {name}={_show(value, style)}"
            return f"{name} = {_show(value, style)}" if style == "toml" else f"{name}={value!r}"

        given = ", ".join(written(name, self.given[name]) for name in self.arguments)
        example = ", ".join(written(name, value) for name, value in self.examples.items())
        return ((f"{given}: " if given else "") + f"optimizer '{self.optimizer}' {self.reason}"
                + (f"; valid e.g. {example}" if example else ""))


def _show(value, style) -> str:
    """A value as the user writes it: --opt betas=0.9,0.99; in TOML betas = [0.9, 0.99]."""
    if isinstance(value, (tuple, list)):
        parts = [_show(v, style) for v in value]
        return ",".join(parts) if style == "--opt" else "[" + ", ".join(parts) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    return f'"{value}"' if isinstance(value, str) and style == "toml" else str(value)


def resolve_optimizer_class(name: str) -> type:
    """The torch class for a registry name or a `package.module:Class` path."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name].cls
    if not is_import_path(name):
        raise UsageError(
            f"unknown optimizer '{name}'{near(name, OPTIMIZERS)}; valid: {', '.join(OPTIMIZERS)}, "
            "or an import path like 'package.module:Class'"
        )
    cls = import_object(name, "optimizer", "a torch.optim.Optimizer subclass")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise UsageError(f"optimizer '{name}' is {cls!r}, not a torch.optim.Optimizer subclass")
    return cls


def optimizer_arguments(name: str, extra: dict, *, lr: float | None = None, rest: dict | None = None) -> dict:
    """The registry defaults updated with `extra`, checked against the class signature.

    With `lr`, the optimizer is also built once on dummy parameters and stepped, so its own
    checks run now rather than in the middle of a sweep: on a matrix and a bias, or on a matrix
    alone when a `rest` optimizer (or the registry entry's) takes every parameter but the matrices.
    """
    cls = resolve_optimizer_class(name)
    parameters = {p.name: p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    defaults = OPTIMIZERS[name].defaults if name in OPTIMIZERS else {}
    for key, value in extra.items():
        if key == "lr":
            raise UsageError("optimizer argument 'lr' is set with --lr (or lr = … in a spec), not --opt")
        if key not in parameters:
            if takes_any:
                continue
            raise UsageError(
                f"optimizer '{name}' has no argument '{key}'{near(key, parameters)}; "
                f"valid: {', '.join(a for a in parameters if a != 'lr')}"
            )
        expected = _expectation(parameters[key], defaults.get(key, parameters[key].default))
        if expected is not None and not expected[0](value):
            example = defaults.get(key, parameters[key].default)
            raise OptimizerArgumentError(name, (key,), extra, f"needs {key} to be {expected[1]}",
                                         {key: example} if _worth_showing(example) else {})
    arguments = {**defaults, **extra}
    if lr is not None:
        # rest None: the registry entry's own (check_rest gives RunConfig's; {}: none, every parameter here)
        matrices_only = bool(OPTIMIZERS[name].rest if name in OPTIMIZERS else False) if rest is None else bool(rest)
        _check_by_building(name, cls, lr, arguments, extra, matrices_only)
    return arguments


# ---- types, from the annotations where they are plain, else from the defaults ----------------

def _expectation(parameter: inspect.Parameter, default):
    """(accepts(value) -> bool, "what is valid") for an argument, or None when anything may go."""
    annotation = parameter.annotation
    if annotation is not inspect.Parameter.empty and not isinstance(annotation, str):
        found = _from_annotation(annotation)
        if found is not None:
            return found
    return _from_default(default)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SIMPLE = {float: (_is_number, "a number"), int: (_is_integer, "an integer"),
          bool: (lambda v: isinstance(v, bool), "true or false"), str: (lambda v: isinstance(v, str), "a string")}


def _from_annotation(annotation):
    if annotation in SIMPLE:
        return SIMPLE[annotation]
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        known = [m for m in members if m is not type(None) and m is not torch.Tensor]
        parts = [_from_annotation(m) for m in known]
        if not parts or any(p is None for p in parts):
            return None  # a type we cannot check here: building the optimizer will
        allows_none = type(None) in members
        checks = [p[0] for p in parts]
        words = " or ".join(p[1] for p in parts) + (" or none" if allows_none else "")
        return (lambda v: (allows_none and v is None) or any(check(v) for check in checks)), words
    if origin is tuple and members and Ellipsis not in members:
        parts = [_from_annotation(m) for m in members]
        if any(p is None for p in parts):
            return None
        kinds = {p[1] for p in parts}
        words = (f"{len(parts)} numbers" if kinds == {"a number"}
                 else f"{len(parts)} values ({', '.join(p[1] for p in parts)})")
        return (lambda v: isinstance(v, (tuple, list)) and len(v) == len(parts)
                and all(p[0](x) for p, x in zip(parts, v))), words
    return None


def _from_default(default):
    if isinstance(default, bool):
        return SIMPLE[bool]
    if _is_number(default):
        return SIMPLE[float]
    if isinstance(default, str):
        return SIMPLE[str]
    if isinstance(default, tuple) and default and all(_is_number(x) for x in default):
        return (lambda v: isinstance(v, (tuple, list)) and len(v) == len(default) and all(map(_is_number, v)),
                f"{len(default)} numbers")
    return None


def _worth_showing(value) -> bool:
    return value is not None and value is not inspect.Parameter.empty


# ---- building it once ------------------------------------------------------------------------

# A user's optimizer may print, allocate or open files in its __init__, so it is built as few times
# as possible: once per configuration by this check (in each process that validates; RunConfig is
# made often: replace, every trial), then once by each run. The schedule check steps a copy.
_checked: set = set()  # (name, lr, arguments) already built
CHECKED_KEPT = 64  # the optimizers the check built last, kept for checked_copy
_kept: dict = {}


def checked_copy(cls: type, lr: float, arguments: dict):
    """A copy of the optimizer the check built and stepped for (cls, lr, arguments), made without
    running its __init__ again; None when none is kept or it cannot be copied."""
    kept = _kept.get((cls, lr, repr(sorted(arguments.items()))))
    try:
        return None if kept is None else copy.deepcopy(kept)
    except Exception:  # noqa: BLE001  e.g. it holds a lock or a file: the caller builds one
        return None


def _check_by_building(name: str, cls: type, lr: float, arguments: dict, extra: dict, matrices_only: bool) -> None:
    key = (name, lr, repr(sorted(arguments.items())), matrices_only)
    if key in _checked:
        return
    step = inspect.signature(cls.step).parameters.get("closure")
    if step is not None and step.default is inspect.Parameter.empty:
        raise OptimizerArgumentError(
            name, (), extra,
            "cannot run in optimstudy's loop: its step(closure) needs a closure that re-evaluates the loss "
            "(as LBFGS does, several times per update); optimstudy's loop calls optimizer.step() once per batch "
            f"without one. Use an optimizer whose step() works without a closure: {', '.join(OPTIMIZERS)}, "
            "or a class of your own")
    weight = torch.nn.Parameter(torch.zeros(2, 2))  # 2-D: some optimizers (Muon) take matrices only
    bias = torch.nn.Parameter(torch.zeros(2))  # and a bias, which such an optimizer needs a `rest` for
    tested = [weight] if matrices_only else [weight, bias]
    stage = "rejects its arguments"
    # at one thread: a sweep checks its optimizers before it forks its workers, and an op run here with
    # more threads (Muon's bfloat16 matmul, through oneDNN) starts OpenMP's pool, which a forked child
    # inherits broken: its first parallel op then waits forever (tests/problems/test_modern_optimizers.py)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer = cls(tested, lr=lr, **arguments)
        stage = f"fails on its first step (on {'a 2x2 test matrix' if matrices_only else 'a 2x2 matrix and a bias'})"
        for parameter in tested:
            parameter.grad = torch.ones_like(parameter)
        if has_modes(optimizer):  # Schedule-Free steps only in train mode, as the loop puts it
            optimizer.train()
        optimizer.step()
    except Exception as error:  # noqa: BLE001  the user's optimizer failing its trial step: said as a usage error
        if not matrices_only and _takes_matrices_only(cls, lr, arguments):
            raise UsageError(
                f"optimizer '{name}' takes only matrices ({type(error).__name__}: {str(error).strip()[:120]}): "
                "give every other parameter (biases, norms, embeddings, the output layer) an optimizer of its own: "
                "--rest optimizer=adamw --rest lr=3e-4 (or --rest lr_ratio=0.015: that times --lr), in a spec "
                "rest = { optimizer = \"adamw\", lr = 3e-4 }; or use the registry's 'muon', which has one"
            ) from None
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        blamed = tuple(k for k in extra if k.lower() in str(error).lower())
        defaults = {**_signature_defaults(cls), **(OPTIMIZERS[name].defaults if name in OPTIMIZERS else {})}
        given = f"with lr={lr:g}" + (f" and {_shown(arguments)}" if arguments else "")
        raise OptimizerArgumentError(name, blamed, extra, f"{stage} ({reason}) {given}",
                                     {k: defaults[k] for k in blamed if _worth_showing(defaults.get(k))}) from None
    finally:
        torch.set_num_threads(threads)
    _checked.add(key)
    _kept[(cls, lr, repr(sorted(arguments.items())))] = optimizer
    if len(_kept) > CHECKED_KEPT:
        del _kept[next(iter(_kept))]


def _takes_matrices_only(cls: type, lr: float, arguments: dict) -> bool:
    """Whether the optimizer that failed on a matrix and a bias builds and steps on the matrix alone."""
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    try:
        optimizer = cls([weight], lr=lr, **arguments)
        weight.grad = torch.ones_like(weight)
        if has_modes(optimizer):
            optimizer.train()
        optimizer.step()
    except Exception:  # noqa: BLE001  any failure means it does not step on that shape
        return False
    return True


def _signature_defaults(cls: type) -> dict:
    return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
            if p.default is not inspect.Parameter.empty}


def _shown(arguments: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())


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


OPT_EXAMPLES = {"--opt": "--opt momentum=0.9 --opt betas=0.9,0.99",
                "--rest": "--rest optimizer=adamw --rest lr=3e-4 --rest betas=0.9,0.95"}


def parse_opt(items: list[str], flag: str = "--opt") -> dict:
    """`--opt KEY=VALUE` (or `--rest KEY=VALUE`) items into typed keyword arguments."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"{flag} '{item}' is not KEY=VALUE (e.g. {OPT_EXAMPLES[flag]})")
        parsed[key.strip()] = parse_opt_value(value)
    return parsed
