"""`optimstudy list problems|optimizers|losses|schedules`: the registries, one line per entry.

    optimstudy list optimizers        # name, torch class, defaults, lr search range, description
"""
from optimstudy.problems import schedules
from optimstudy.problems.losses import LOSSES
from optimstudy.problems.optimizers import OPTIMIZERS
from optimstudy.problems.registry import PROBLEMS


def list_command(what: str) -> int:
    """Print the registry `what` names (problems, optimizers, schedules, else losses); returns 0."""
    if what == "problems":
        for name, problem in PROBLEMS.items():
            target = f"{problem.target[0]} {problem.target[1]:g}" if problem.target else "-"
            print(f"{name:16} {problem.task:15} data={problem.dataset:13} loss={problem.default_loss:14} "
                  f"target={target:18} {problem.description}")
        print("\nany other: --problem package.module:problem (an optimstudy.problems.Problem)")
    elif what == "optimizers":
        for name, spec in OPTIMIZERS.items():
            defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items()) or "torch defaults"
            low, high, _ = spec.space["lr"]
            print(f"{name:10} {spec.cls.__module__}.{spec.cls.__name__:9} {defaults:28} "
                  f"lr search {low:g}..{high:g} (log)  {spec.description}")
        print("\nany other: --optimizer package.module:Class, e.g. schedulefree:AdamWScheduleFree, prodigyopt:Prodigy "
              "(pip install -e '.[optimizers]'); a matrices-only one with --rest optimizer=adamw --rest lr=3e-4")
    elif what == "schedules":
        print("\n\n".join(schedules.__doc__.split("\n\n")[2:]).rstrip())
    else:
        for name, (function, tasks) in LOSSES.items():
            print(f"{name:14} {', '.join(tasks):19} {(function.__doc__ or '').strip()}")
    return 0
