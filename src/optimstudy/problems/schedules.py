"""Learning-rate schedules: torch.optim.lr_scheduler by a short name or its class name, or by import path.

    RunConfig(..., schedule="step", schedule_args={"step_size": 1, "gamma": 0.7}, schedule_every="epoch")

| name          | torch                                   | stepped  | defaults from the budget           |
|---------------|-----------------------------------------|----------|------------------------------------|
| constant      | none                                    |          |                                    |
| step          | StepLR(step_size, gamma=0.1)            | epoch    | step_size=1                        |
| multistep     | MultiStepLR(milestones, gamma=0.1)      | epoch    | (milestones required)              |
| exponential   | ExponentialLR(gamma)                    | epoch    | (gamma required)                   |
| cosine        | CosineAnnealingLR(T_max, eta_min=0)     | step     | T_max = the whole run              |
| warmup_cosine | LinearLR(start_factor) then cosine      | step     | warmup = 5% of the run             |
| onecycle      | OneCycleLR(max_lr, total_steps)         | step     | max_lr = lr, total_steps = the run |

Any other class of torch.optim.lr_scheduler works by its name (e.g. "PolynomialLR"), and
`package.module:name` names a scheduler class or a function `make(optimizer, **args)`
(given `total_steps`, counted in the units it is stepped in, when it takes that argument).
"""
import inspect
import math

import torch

from optimstudy.errors import UsageError, near
from optimstudy.imports import import_object, is_import_path
from optimstudy.problems.optimizers import checked_copy, has_modes

SHORT_NAMES = {"step": "StepLR", "multistep": "MultiStepLR", "exponential": "ExponentialLR",
               "cosine": "CosineAnnealingLR", "onecycle": "OneCycleLR"}
EPOCH_WISE = ("step", "multistep", "exponential", "StepLR", "MultiStepLR", "ExponentialLR")
EVERY = ("step", "epoch")
NAMES = ("constant", *SHORT_NAMES, "warmup_cosine")
HIDDEN = ("optimizer", "last_epoch", "verbose", "self")


def default_every(name: str) -> str:
    """How a schedule is stepped when the recipe does not say: decays by epoch, curves by step."""
    return "epoch" if name in EPOCH_WISE else "step"


def _torch_class(name: str):
    module = torch.optim.lr_scheduler
    cls = getattr(module, SHORT_NAMES.get(name, name), None)
    if name.startswith("_") or not (isinstance(cls, type) and issubclass(cls, module.LRScheduler)) \
            or cls in (module.LRScheduler, module.SequentialLR, module.ChainedScheduler):
        classes = [n for n in dir(module) if not n.startswith("_") and isinstance(getattr(module, n), type)
                   and issubclass(getattr(module, n), module.LRScheduler) and n not in ("LRScheduler",
                                                                                           "SequentialLR",
                                                                                           "ChainedScheduler")]
        raise UsageError(f"unknown schedule '{name}'{near(name, NAMES)}; valid: {', '.join(NAMES)}, a "
                         f"torch.optim.lr_scheduler class ({', '.join(classes)}), or 'package.module:name'")
    return cls


def make_schedule(name: str, args: dict, optimizer, total: int):
    """The scheduler for `optimizer`, or None for a constant lr; `total` counts the steps it will take."""
    if name == "constant":
        if args:
            raise UsageError(f"schedule 'constant' takes no arguments, got {', '.join(args)}")
        return None
    args = dict(args)
    if name == "warmup_cosine":
        return _warmup_cosine(optimizer, total, **args)
    factory = schedule_factory(name)
    accepted = _parameters(factory)
    defaults = {"step": {"step_size": 1}, "cosine": {"T_max": total}, "CosineAnnealingLR": {"T_max": total},
                "onecycle": {"max_lr": optimizer.param_groups[0]["lr"], "total_steps": total},
                "OneCycleLR": {"max_lr": optimizer.param_groups[0]["lr"], "total_steps": total}}.get(name, {})
    if "total_steps" in accepted and "epochs" not in args:
        defaults.setdefault("total_steps", total)
    unknown = [key for key in args if key not in accepted and "**" not in accepted]
    if unknown:
        raise UsageError(f"schedule '{name}' has no argument '{unknown[0]}'{near(unknown[0], accepted)}; "
                         f"valid: {', '.join(a for a in accepted if a not in HIDDEN and a != '**')}")
    try:
        return factory(optimizer, **{**defaults, **args})
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise UsageError(f"schedule '{name}' with {args or 'no arguments'}: {error}") from None


def schedule_factory(name: str):
    """What builds schedule `name` (its signature tells a spec which arguments take a list as one value)."""
    if name == "warmup_cosine":
        return _warmup_cosine
    if is_import_path(name):
        factory = import_object(name, "schedule", "a torch lr scheduler class or a function make(optimizer, **args)")
        if not callable(factory):
            raise UsageError(f"schedule '{name}' is a {type(factory).__name__}, not callable")
        return factory
    return _torch_class(name)


def _parameters(factory) -> list[str]:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return ["**"]
    return ["**" if p.kind == p.VAR_KEYWORD else p.name for p in parameters if p.name not in ("self", "optimizer")]


def _warmup_cosine(optimizer, total: int, warmup: int | None = None, start_factor: float = 0.01,
                   eta_min: float = 0.0, **unknown):
    """A linear warm-up from start_factor * lr over `warmup` steps, then a cosine down to eta_min."""
    if unknown:
        raise UsageError(f"schedule 'warmup_cosine' has no argument '{next(iter(unknown))}'; "
                         "valid: warmup, start_factor, eta_min")
    warmup = max(1, math.ceil(0.05 * total)) if warmup is None else warmup
    if not (isinstance(warmup, int) and 0 < warmup < max(total, 2)):
        raise UsageError(f"schedule 'warmup_cosine': warmup must be an integer in 1..{max(total - 1, 1)} "
                         f"(steps of the schedule), got {warmup!r}")
    lr = torch.optim.lr_scheduler
    try:
        return lr.SequentialLR(optimizer, [lr.LinearLR(optimizer, start_factor=start_factor, total_iters=warmup),
                                           lr.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup),
                                                                eta_min=eta_min)], milestones=[warmup])
    except (TypeError, ValueError) as error:
        raise UsageError(f"schedule 'warmup_cosine': {error}") from None


_schedules_checked: set = set()  # (schedule, arguments, optimizer configuration) already stepped


def check_schedule(name: str, args: dict, every: str, optimizer_class, lr: float, optimizer_args: dict) -> None:
    """Raise a UsageError for a bad name, argument or value, by stepping it once on a copy of the
    optimizer that optimizer_arguments built (so a user's optimizer is not built again for it)."""
    if every not in EVERY:
        raise UsageError(f"schedule_every must be one of {', '.join(EVERY)}, got {every!r}")
    if not isinstance(args, dict):
        raise UsageError(f"schedule arguments must be a table of name = value, got {args!r}")
    if name == "constant":
        make_schedule(name, args, None, total=100)  # no optimizer needed: it only checks for arguments
        return
    key = (name, repr(sorted(args.items())), optimizer_class, lr, repr(sorted(optimizer_args.items())))
    if key in _schedules_checked:
        return
    optimizer = checked_copy(optimizer_class, lr, optimizer_args)
    if optimizer is None:
        weight = torch.zeros(1, requires_grad=True)
        try:
            optimizer = optimizer_class([weight], lr=lr, **optimizer_args)
        except Exception:  # noqa: BLE001  the optimizer's own arguments are checked elsewhere; a matrices-only one (Muon) lands here
            optimizer = torch.optim.SGD([weight], lr=lr, momentum=0.9)
    if has_modes(optimizer):  # Schedule-Free steps only in train mode
        optimizer.train()
    schedule = make_schedule(name, args, optimizer, total=100)
    if schedule is None:
        return
    try:  # some arguments are only used when stepping (ExponentialLR's gamma)
        for _ in range(3):
            optimizer.step()
            schedule.step()
        lr_now = optimizer.param_groups[0]["lr"]
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise UsageError(f"schedule '{name}' with {args or 'no arguments'}: {error}") from None
    if not isinstance(lr_now, (int, float)) or not math.isfinite(lr_now):
        raise UsageError(f"schedule '{name}' with {args or 'no arguments'} gives lr {lr_now!r}; expected a number")
    _schedules_checked.add(key)
