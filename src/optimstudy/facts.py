"""What the report knows about a run's problem, without importing torch (pure Python).

`optimstudy report` must not import torch (its memory and import time: docs/performance.md),
so what it needs about a problem is written into each run when it starts
(run.runner.problem_tags) and read back from the store as run columns:

    optimstudy.problem.task          classification / binary / regression
    optimstudy.problem.default_loss  the loss the problem's target is stated in
    optimstudy.problem.target        JSON [metric, value] (absent: no target)
    optimstudy.problem.has_optimum   "True" / "False"
    optimstudy.problem.quadratic     2-weight problems that trace their weights (the valley): the
                                     training MSE as w'Aw - 2b'w + c, JSON {"a", "b", "c"}

Runs recorded before these tags existed: the built-in problems' facts are in BUILTIN_PROBLEMS
(optimstudy.problems.PROBLEMS is built from it); a user's problem is then
imported as before, by its import path (that alone imports torch).

    from optimstudy.facts import problem_facts
    problem_facts(study.runs)["linreg"].target   # ('val_loss', 0.02)
"""
import json
from dataclasses import dataclass
from functools import cache

from optimstudy.imports import import_made, is_import_path


@dataclass(frozen=True)
class ProblemFacts:
    task: str
    default_loss: str
    target: tuple | None = None  # (metric, value)
    has_optimum: bool = False


# The built-in problems' task, loss and target: problems.registry builds PROBLEMS from these. Targets
# for time to target, as in AlgoPerf: a little below what a tuned optimizer reaches in the study's
# budgets; regression targets are 2x the noise floor (NOISE_STD 0.1 -> MSE 0.01). The order is the
# registry's: figures order panels by it and colour optimizers by it.
BUILTIN_PROBLEMS = {
    "mnist_logreg": ProblemFacts("classification", "cross_entropy", ("val_accuracy", 0.90)),
    "mnist_mlp": ProblemFacts("classification", "cross_entropy", ("val_accuracy", 0.95)),
    "mnist_cnn": ProblemFacts("classification", "cross_entropy", ("val_accuracy", 0.97)),
    "mnist_lenet": ProblemFacts("classification", "cross_entropy", ("val_accuracy", 0.97)),
    "fashion_logreg": ProblemFacts("classification", "cross_entropy", ("val_accuracy", 0.80)),
    "fashion_mlp": ProblemFacts("classification", "cross_entropy", ("val_accuracy", 0.84)),
    "fashion_cnn": ProblemFacts("classification", "cross_entropy", ("val_accuracy", 0.86)),
    "linreg": ProblemFacts("regression", "mse", ("val_loss", 0.02), has_optimum=True),
    "regression_mlp": ProblemFacts("regression", "mse", ("val_loss", 0.05)),
    "valley": ProblemFacts("regression", "mse", ("val_loss", 0.02), has_optimum=True),
}
# "muon" is registered where torch ships torch.optim.Muon (2.9 and later)
BUILTIN_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam", "muon")

VALLEY_START = (-2.0, 4.0)  # far up the shallow side of the valley; the optimum is near (1, 1)
VALLEY_SCALES = (1.0, 0.2)  # feature stds: curvatures 1 and 0.04, a 25:1 valley
NOISE_STD = 0.1
# what a run's seed varies unless its config says otherwise (RunConfig.vary); also what runs logged
# before `vary` existed varied. The split is fixed by split_seed alone: every run validates on the same rows.
DEFAULT_VARY = "init,order"


def expected_valley_quadratic() -> dict:
    """The valley's expected training MSE (features N(0, scale²), y = w1 + w2 weights 1, noise 0.1), for the
    figure when no run carries the measured one."""
    a = [[VALLEY_SCALES[0] ** 2, 0.0], [0.0, VALLEY_SCALES[1] ** 2]]
    b = [a[0][0], a[1][1]]  # A @ (1, 1)
    return {"a": a, "b": b, "c": sum(b) + NOISE_STD ** 2}


def facts_from_columns(task, default_loss, target, has_optimum) -> ProblemFacts | None:
    """ProblemFacts from one run's tag columns; None when the run predates them."""
    if not isinstance(task, str) or not task:
        return None
    found = None
    if isinstance(target, str) and target:
        try:
            metric, value = json.loads(target)
            found = (str(metric), float(value))
        except (ValueError, TypeError):
            found = None
    return ProblemFacts(task, default_loss if isinstance(default_loss, str) else "", found,
                        has_optimum == "True")


@cache
def facts_for(name: str) -> ProblemFacts | None:
    """A problem's facts by name, for runs recorded without the optimstudy.problem.* tags: the
    built-in table, else the user's problem imported (that alone imports torch); None when it does
    not import here (then there is no target)."""
    if name in BUILTIN_PROBLEMS:
        return BUILTIN_PROBLEMS[name]
    if not is_import_path(name):
        return None
    try:  # the user's module, not optimstudy.problems: the results side never imports the run side
        found = import_made(name, "problem", "a Problem", lambda found: hasattr(found, "task"))
        return ProblemFacts(found.task, found.default_loss, tuple(found.target) if found.target else None,
                            found.has_optimum)
    except Exception:  # noqa: BLE001  any failure to import a user's problem just means "no target"
        return None


def problem_facts(runs) -> dict:
    """problem name -> ProblemFacts for the runs (a DataFrame with a problem column and the tag columns):
    as each run recorded them, else facts_for(name)."""
    facts = {}
    columns = [runs[c] if c in runs else [None] * len(runs)
               for c in ("problem_task", "problem_default_loss", "problem_target", "problem_has_optimum")]
    for problem, *values in zip(runs["problem"], *columns):
        if not isinstance(problem, str):  # None or NaN: not a training run
            continue
        if facts.get(problem) is None:
            facts[problem] = facts_from_columns(*values)
    return {name: found or facts_for(name) for name, found in facts.items()}
