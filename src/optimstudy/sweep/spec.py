"""Experiment specs, as data: `experiments/*.toml`, read and validated by spec_reader.load_spec and
nowhere else.

    name = "mnist-optimizers"     # the MLflow experiment and the Optuna study
    problem = "mnist_mlp"         # or problems = [...]; or "package.module:problem" (imported by every worker)
    epochs = 3                    # or steps = N: the same budget for every trial
    batch_size = 128              # a list makes it a grid axis (also loss, zero_grad, accumulate)
    seeds = [0, 1, 2]
    devices = ["cpu"]             # "cuda", "mps", "auto"; absent devices are skipped
    schedule = "step"             # problems/schedules.py; with schedule_args = { gamma = 0.7 },
    schedule_every = "epoch"      # and "step" or "epoch"; also shuffle, val_fraction (0: none), split_seed (a list too)
                                  # schedule_args = { warmup = [5, 10] }: tuned like an optimizer argument
    vary = ["init", "order"]      # what a seed varies; "data": each seed its own train/validation split
    update_norm_every = 10        # steps between exact update norms (1: every step); loss and grad norm: every step
    stack_seeds = true            # a configuration's seeds train as one batched model where the optimizer allows
    max_stack = 8                 # (run/stacked.py); at most this many in one stack (default: 8 CPU, 32 GPU)

    [optimizers.sgd]
    lr = [0.01, 0.03, 0.1, 0.3]   # an explicit grid
    [optimizers.adam]
    lr = { log = [1e-4, 1e-1], points = 7 }   # a log-spaced grid
    betas = [0.9, 0.999]                      # fixed optimizer arguments
    [optimizers.adamw]
    lr = [1e-3, 3e-3]
    weight_decay = [0.0, 0.01, 0.1]           # a list is a grid axis: 2 lrs x 3 weight decays, the best one picked
    betas = [[0.9, 0.999], [0.95, 0.99]]      # an argument whose value is a list (betas): a list of lists
    [optimizers.muon]             # Muon on the hidden matrices, AdamW on the rest (parameter_groups)
    lr = [0.01, 0.02, 0.05]
    rest = { optimizer = "adamw", lr_ratio = 0.015 }   # or lr = 3e-4; "muon" has this one by default

    [search]                      # instead of the grid: an Optuna search per optimizer
    sampler = "tpe"               # tpe, random, gp or grid
    trials = 20                   # per optimizer (and problem, device, setting)
    pruner = "median"             # none, median or hyperband
    metric = "val_loss"           # the objective: any metric its runs log at the end (test_*: warned)
    direction = "minimize"
    [optimizers.adam.search]
    lr = { low = 1e-5, high = 1e-1, log = true }

    [confirm]                     # tune, then rerun each optimizer's best with more seeds
    seeds = 3

    [decide]                      # then add seeds to the pairs still open until each is decided
    max_seeds = 20                # (or out of reach), with the error controlled at every look
    seeds_per_round = 5
    time_budget_s = 3600          # optional: no round starts after this

    [[runs]]                      # single runs beside the grid, e.g. the zero_grad bug
    optimizer = "sgd"
    lr = 0.1
    zero_grad = false

Every error names the file, the key, the line where TOML gives one, and what was valid.
"""
import copy
import itertools
import json
import re
from dataclasses import asdict, dataclass, field

from optimstudy.errors import UsageError
from optimstudy.facts import DEFAULT_VARY
from optimstudy.run.config import RunConfig

SAMPLERS = ("tpe", "random", "gp", "grid")
PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("minimize", "maximize")
NAME_PATTERN = re.compile(r"[^\W_][\w. -]{0,99}")  # letters of any script (MLflow and Optuna store them), digits
LABEL_MAX = 100  # an optimizer's label may be its import path: as long as a name
LABEL_RULE = (f"1-{LABEL_MAX} printable characters, not all spaces (letters of any script, digits, spaces, "
              "punctuation such as '.', ':', '_', '-'), with no '|', newline, tab or other control character (a "
              "label is a cell of the sweep's table, the report's and the MLflow note's)")
GRID_SETTINGS = ("batch_size", "loss", "zero_grad", "accumulate", "split_seed")  # a list here is a grid axis
SCALAR_SETTINGS = ("eval_every", "schedule", "schedule_args", "schedule_every", "clip_grad_norm", "threads",
                   "shuffle", "val_fraction", "vary", "update_norm_every")
TOP_KEYS = ("name", "description", "problem", "problems", "epochs", "steps", "seeds", "devices", "metric",
            "direction", "optimizers", "search", "confirm", "decide", "runs", "stack_seeds", "max_stack",
            "trial_timeout_s", "max_trials", *GRID_SETTINGS, *SCALAR_SETTINGS)
SEARCH_KEYS = ("sampler", "trials", "pruner", "metric", "direction", "seed")
DECIDE_KEYS = ("max_seeds", "seeds_per_round", "time_budget_s")
RUN_KEYS = ("problem", "optimizer", "lr", "opt", "rest", "label", *GRID_SETTINGS, *SCALAR_SETTINGS)


def valid_label(label) -> bool:
    """Whether `label` may name an optimizer in a spec (LABEL_RULE)."""
    return (isinstance(label, str) and 0 < len(label) <= LABEL_MAX and label.isprintable() and "|" not in label
            and bool(label.strip()))


@dataclass(frozen=True)
class OptimizerPlan:
    label: str  # the table's key: a registry name, or any label with optimizer = "pkg.mod:Class"
    optimizer: str
    lrs: tuple  # the grid (empty in search mode when a search space is given)
    fixed: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)  # argument -> (low, high, log), for [search]
    rest: dict = field(default_factory=dict)  # rest = { optimizer, lr or lr_ratio, ... }: see parameter_groups
    grid: dict = field(default_factory=dict)  # argument -> its values: grid axes tuned beside lr (grid mode only)

    def argument_sets(self):
        """The optimizer arguments of each grid combination: `fixed` alone when nothing is a grid."""
        for values in itertools.product(*self.grid.values()):
            yield {**self.fixed, **dict(zip(self.grid, values))}


@dataclass(frozen=True)
class Search:
    sampler: str = "tpe"
    trials: int = 20
    pruner: str = "none"
    seed: int = 0


@dataclass(frozen=True)
class Decide:
    """[decide]: after the planned seeds, add seeds in rounds to the best configurations whose pairs are
    still open, until each is decided or out of reach, or max_seeds or the time budget is spent."""
    max_seeds: int = 20  # per label and problem: the sequential test's horizon (results/sequential.py)
    seeds_per_round: int = 5
    time_budget_s: float | None = None  # no new round starts after this many seconds of rounds

    def as_tag(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Spec:
    path: str
    name: str
    problems: tuple
    budget: dict  # {"epochs": x} or {"steps": n}
    seeds: tuple
    devices: tuple
    settings: dict  # GRID_SETTINGS -> tuple of values; SCALAR_SETTINGS -> value
    optimizers: tuple  # OptimizerPlan, ...
    metric: str = "val_loss"
    direction: str = "minimize"
    search: Search | None = None
    confirm_seeds: int = 0
    decide: Decide | None = None  # seeds until decided ([decide], or `sweep --until-decided`)
    runs: tuple = ()  # extra single configurations (dicts)
    description: str = ""
    text: str = ""  # the file as read, logged with the sweep
    schedule_grid: dict = field(default_factory=dict)  # schedule argument -> values: tuned like optimizer.grid
    # how trials run, not what they are (not part of the study's identity): seeds of one configuration
    # claimed together by one worker and trained stacked (run/stacked.py), at most max_stack at once
    stack_seeds: bool = False
    max_stack: int | None = None  # None: stacked.MAX_STACK for the device
    # how it runs, not what: neither is part of the study's identity (planning.spec_identity)
    trial_timeout_s: float | None = None  # a trial past this wall-clock time is FAILED (processes.Watchdog)
    max_trials: int | None = None  # allows a plan over planning.MAX_TRIALS_UNASKED trials, up to this many

    def grid_settings(self):
        """Every combination of the list-valued settings, as dicts."""
        keys = [k for k in GRID_SETTINGS if k in self.settings]
        for values in itertools.product(*(self.settings[k] for k in keys)):
            yield dict(zip(keys, values))

    def scalar_settings(self) -> dict:
        return {k: v for k, v in self.settings.items() if k in SCALAR_SETTINGS}

    def schedule_arg_sets(self):
        """The schedule arguments of each schedule_grid combination (one set, as given, without a grid)."""
        fixed = self.settings.get("schedule_args", {})
        for values in itertools.product(*self.schedule_grid.values()):
            yield {**fixed, **dict(zip(self.schedule_grid, values))}

    def base_config(self, problem: str, optimizer: OptimizerPlan, lr: float, seed: int, device: str,
                    opt: dict | None = None, schedule_args: dict | None = None, **settings) -> RunConfig:
        """`settings`: one combination of the grid axes (grid_settings); those not given take their first value.
        `opt`, `schedule_args`: one of optimizer.argument_sets() and schedule_arg_sets() (default: the first)."""
        settings = {**next(self.grid_settings()), **settings}
        scalars = self.scalar_settings()
        if self.schedule_grid:
            scalars["schedule_args"] = next(self.schedule_arg_sets()) if schedule_args is None else schedule_args
        return RunConfig(problem=problem, optimizer=optimizer.optimizer, lr=lr,
                         opt=dict(next(optimizer.argument_sets()) if opt is None else opt),
                         rest=dict(optimizer.rest), seed=seed, device=device, **self.budget, **scalars, **settings)


class SpecError(UsageError):
    pass


def every_config(spec: Spec):
    for problem, optimizer, settings in itertools.product(spec.problems, spec.optimizers, spec.grid_settings()):
        lr = optimizer.lrs[0] if optimizer.lrs else optimizer.space.get("lr", (1e-3,))[0]
        for opt, schedule_args in itertools.product(optimizer.argument_sets(), spec.schedule_arg_sets()):
            scalars = {**spec.scalar_settings(), **({"schedule_args": schedule_args} if spec.schedule_grid else {})}
            yield dict(problem=problem, optimizer=optimizer.optimizer, lr=lr, opt=opt, rest=dict(optimizer.rest),
                       **spec.budget, **scalars, **settings)
    for run in spec.runs:
        yield {**{k: v for k, v in run.items() if k != "label"}, **spec.budget}


def config_key(config: RunConfig, label: str | None = None) -> str:
    """A stable identity for a trial: what "completed exactly once" is counted by.

    The spec's label is part of it: two labels of one configuration are two optimizers to compare,
    never one trial. It is left out where it is the optimizer's own name, and `vary` where it is
    the default, so a study queued before either was part of the key keeps its keys and resumes.
    `update_norm_every` is always left out: it changes what is recorded, not what is trained.
    """
    params = config.params()
    if params.get("vary") == DEFAULT_VARY:
        del params["vary"]
    del params["update_norm_every"]
    if label is not None and label != config.optimizer:
        params["label"] = label
    return json.dumps(params, sort_keys=True, default=str)


def with_seed(config: RunConfig, seed: int) -> RunConfig:
    """`config` with another seed, without building and checking it again (RunConfig's checks add up
    over a large grid, and a seed changes nothing they check): for a planner whose seeds are
    checked already. The copy shares the original's argument dicts, which nothing changes in place."""
    if seed == config.seed:
        return config
    copied = copy.copy(config)
    object.__setattr__(copied, "seed", seed)
    return copied


def config_keys_by_seed(config: RunConfig, label: str | None, seeds) -> list[str]:
    """config_key(with_seed(config, seed), label) for each seed, from one text: the seed's value is
    the only part that differs (checked: the marker must appear exactly once, else each is built)."""
    marker = -7_919_104_733  # no seed is negative: it cannot be part of the configuration otherwise
    text = config_key(with_seed(config, marker), label)
    if text.count(str(marker)) != 1:
        return [config_key(with_seed(config, seed), label) for seed in seeds]
    before, after = text.split(str(marker))
    return [f"{before}{seed}{after}" for seed in seeds]
