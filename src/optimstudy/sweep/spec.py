"""Experiment specs: `experiments/*.toml`, read and validated here and nowhere else.

    name = "mnist-optimizers"     # the MLflow experiment and the Optuna study
    problem = "mnist_mlp"         # or problems = [...]; or "package.module:problem" (imported by every worker)
    epochs = 3                    # or steps = N: the same budget for every trial
    batch_size = 128              # a list makes it a grid axis (also loss, zero_grad, accumulate)
    seeds = [0, 1, 2]
    devices = ["cpu"]             # "cuda", "mps", "auto"; absent devices are skipped
    schedule = "step"             # optimstudy.schedules; with schedule_args = { gamma = 0.7 },
    schedule_every = "epoch"      # and "step" or "epoch"; also shuffle, val_fraction (0: none), split_seed (a list too)
                                  # schedule_args = { warmup = [5, 10] }: tuned like an optimizer argument
    vary = ["init", "order"]      # what a seed varies; "data": each seed its own train/validation split
    update_norm_every = 10        # steps between exact update norms (1: every step); loss and grad norm: every step

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

    [[runs]]                      # single runs beside the grid, e.g. the zero_grad bug
    optimizer = "sgd"
    lr = 0.1
    zero_grad = false

Every error names the file, the key, the line where TOML gives one, and what was valid.
"""
import difflib
import inspect
import itertools
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from optimstudy.run.config import DEFAULT_VARY, SEED_RANGE, VARY_PARTS, RunConfig, is_seed
from optimstudy.run.devices import DEVICE_CHOICES
from optimstudy.errors import UsageError
from optimstudy.problems.losses import LOSSES
from optimstudy.results.objectives import default_direction, evaluation_metric, final_metric_names
from optimstudy.problems.optimizers import OPTIMIZERS, OptimizerArgumentError, optimizer_arguments, resolve_optimizer_class
from optimstudy.problems.parameter_groups import REST_EXAMPLE, check_rest
from optimstudy.problems.registry import resolve_problem
from optimstudy.problems.schedules import schedule_factory

SAMPLERS = ("tpe", "random", "gp", "grid")
PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("minimize", "maximize")
NAME_PATTERN = re.compile(r"[^\W_][\w. -]{0,99}")  # letters of any script (MLflow and Optuna store them), digits
GRID_SETTINGS = ("batch_size", "loss", "zero_grad", "accumulate", "split_seed")  # a list here is a grid axis
SCALAR_SETTINGS = ("eval_every", "schedule", "schedule_args", "schedule_every", "clip_grad_norm", "threads",
                   "shuffle", "val_fraction", "vary", "update_norm_every")
TOP_KEYS = ("name", "description", "problem", "problems", "epochs", "steps", "seeds", "devices", "metric",
            "direction", "optimizers", "search", "confirm", "runs", *GRID_SETTINGS, *SCALAR_SETTINGS)
SEARCH_KEYS = ("sampler", "trials", "pruner", "metric", "direction", "seed")
RUN_KEYS = ("problem", "optimizer", "lr", "opt", "rest", "label", *GRID_SETTINGS, *SCALAR_SETTINGS)


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
    runs: tuple = ()  # extra single configurations (dicts)
    description: str = ""
    text: str = ""  # the file as read, logged with the sweep
    schedule_grid: dict = field(default_factory=dict)  # schedule argument -> values: tuned like optimizer.grid

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


def load_spec(path) -> Spec:
    path = Path(path)
    if not path.is_file():
        near_files = sorted(p.name for p in path.parent.glob("*.toml")) if path.parent.is_dir() else []
        hint = f"; specs in {path.parent}/: {', '.join(near_files)}" if near_files else ""
        raise SpecError(f"spec file '{path}' not found{hint}")
    text = _read_utf8(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: malformed TOML: {error}") from None
    return parse_spec(raw, str(path), text)


def _read_utf8(path: Path) -> str:
    """TOML is UTF-8 by definition; a file saved as Latin-1 (or a binary one) is named, with the place."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpecError(f"spec file '{path}' cannot be read: {error.strerror}") from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is dropped, not an error
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise SpecError(f"{path}: not UTF-8 text: byte 0x{data[error.start]:02x} at line {line}, column {column} "
                        "cannot be decoded; a spec must be UTF-8 (TOML is): save it as UTF-8, e.g. "
                        f"`iconv -f latin1 -t utf-8 {path.name} > fixed.toml`") from None


def parse_spec(raw: dict, source: str = "<spec>", text: str = "") -> Spec:
    where = _Where(source, text)
    where.keys(raw, TOP_KEYS, "")
    name = where.string(raw, "name", required=True)
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        # the name is a file name (the study's journal, the artifact folder) and a database key
        where.fail("name", name, "1-100 characters: letters, digits, '.', '_', '-' or spaces (letters of any script, "
                   "e.g. 'études'), starting with a letter or digit; no '/', ':' or other punctuation (it names "
                   "files and the study)")

    if ("problem" in raw) == ("problems" in raw):
        where.fail("problem", raw.get("problem", raw.get("problems")), "exactly one of problem = \"…\" or problems = [...]")
    problems = where.list_of(raw, "problems", str) if "problems" in raw else (where.string(raw, "problem"),)
    for problem in problems:
        where.problem("problem" if "problem" in raw else "problems", problem)

    if ("epochs" in raw) == ("steps" in raw):
        where.fail("epochs", raw.get("epochs", raw.get("steps")), "exactly one budget: epochs = N or steps = N")
    budget = ({"epochs": where.positive(raw, "epochs", float)} if "epochs" in raw
              else {"steps": where.positive(raw, "steps", int)})

    seeds = where.list_of(raw, "seeds", int, default=(0,))
    for seed in seeds:
        if not is_seed(seed):
            where.fail("seeds", seed, f"each seed {SEED_RANGE}")
    devices = where.list_of(raw, "devices", str, default=("cpu",))
    for device in devices:
        if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
            where.fail("devices", device, f"one of {', '.join(DEVICE_CHOICES)}")

    settings = {}
    for key in GRID_SETTINGS:
        if key in raw:
            values = raw[key] if isinstance(raw[key], list) else [raw[key]]
            if not values:
                where.fail(key, raw[key], "a value or a non-empty list")
            settings[key] = tuple(where.setting(key, value) for value in values)
    for key in SCALAR_SETTINGS:
        if key in raw:
            settings[key] = where.setting(key, raw[key])

    search = None
    metric = where.string(raw, "metric", default="val_loss")
    direction = raw.get("direction")
    if "search" in raw:
        table = where.table(raw, "search")
        where.keys(table, SEARCH_KEYS, "search")
        search = Search(
            sampler=where.choice("search.sampler", table.get("sampler", "tpe"), SAMPLERS),
            trials=where.positive(table, "trials", int, prefix="search.") if "trials" in table else 20,
            pruner=where.choice("search.pruner", table.get("pruner", "none"), PRUNERS),
            seed=where.integer(table, "seed", prefix="search.", default=0),
        )
        metric = table.get("metric", metric)
        direction = table.get("direction", direction)
        if search.sampler == "grid":
            search = None  # the grid sampler over the spec's own grid is the grid mode
    if "metric" not in raw and "metric" not in raw.get("search", {}) and settings.get("val_fraction") == 0:
        metric = "train_loss"  # no validation split: the objective says it is the whole training split
    if not isinstance(metric, str):
        where.fail("metric", metric, "a metric name, e.g. \"val_loss\"")
    if metric.startswith("val_") and settings.get("val_fraction") == 0:
        where.fail("metric", metric, "a train_* metric: val_fraction = 0 leaves no validation split")
    direction = direction or default_direction(metric)
    where.choice("direction", direction, DIRECTIONS)

    optimizers_table = where.table(raw, "optimizers", required=True)
    if not optimizers_table:
        where.fail("optimizers", {}, "at least one [optimizers.NAME] table")
    optimizers = tuple(where.optimizer(label, entry, search is not None)
                       for label, entry in optimizers_table.items())
    schedule_grid = where.schedule_grid(raw, settings, search is not None)

    confirm_seeds = 0
    if "confirm" in raw:
        table = where.table(raw, "confirm")
        where.keys(table, ("seeds",), "confirm")
        confirm_seeds = where.positive(table, "seeds", int, prefix="confirm.")

    runs = []
    for index, entry in enumerate(raw.get("runs", [])):
        key = f"runs[{index}]"
        if not isinstance(entry, dict):
            where.fail(key, entry, "a [[runs]] table")
        where.keys(entry, RUN_KEYS, key)
        run = {"problem": where.problem(f"{key}.problem", entry.get("problem", problems[0]))}
        run["optimizer"] = where.string(entry, "optimizer", required=True, prefix=f"{key}.")
        run["lr"] = where.positive(entry, "lr", float, prefix=f"{key}.")
        opt = entry.get("opt", {})
        if not isinstance(opt, dict):
            where.fail(f"{key}.opt", opt, "a table of optimizer arguments, e.g. opt = { momentum = 0.9 }")
        run["opt"] = {k: tuple(v) if isinstance(v, list) else v for k, v in opt.items()}
        if "rest" in entry:  # only when given: a study's identity from before rest stays the same
            run["rest"] = where.rest(f"{key}.rest", entry["rest"])
        where.check_optimizer(f"{key}.optimizer", run["optimizer"], run["opt"], run["lr"], f"{key}.opt",
                              rest=run.get("rest"))
        for setting in (*GRID_SETTINGS, *SCALAR_SETTINGS):
            if setting in entry:
                run[setting] = where.setting(f"{key}.{setting}", entry[setting])
        if "label" in entry:
            run["label"] = str(entry["label"])
        runs.append(run)

    spec = Spec(path=source, name=name, problems=tuple(problems), budget=budget, seeds=tuple(seeds),
                devices=tuple(devices), settings=settings, optimizers=optimizers, metric=metric,
                direction=direction, search=search, confirm_seeds=confirm_seeds, runs=tuple(runs),
                description=str(raw.get("description", "")), text=text, schedule_grid=schedule_grid)
    for config in _every_config(spec):  # whatever RunConfig itself rejects, reject here, before any run
        try:
            RunConfig(**config)
        except UsageError as error:
            raise SpecError(f"{source}: {error}") from None
    where.objective(spec, "search.metric" if "metric" in raw.get("search", {}) else "metric")
    return spec


def _every_config(spec: Spec):
    for problem, optimizer, settings in itertools.product(spec.problems, spec.optimizers, spec.grid_settings()):
        lr = optimizer.lrs[0] if optimizer.lrs else optimizer.space.get("lr", (1e-3,))[0]
        for opt, schedule_args in itertools.product(optimizer.argument_sets(), spec.schedule_arg_sets()):
            scalars = {**spec.scalar_settings(), **({"schedule_args": schedule_args} if spec.schedule_grid else {})}
            yield dict(problem=problem, optimizer=optimizer.optimizer, lr=lr, opt=opt, rest=dict(optimizer.rest),
                       **spec.budget, **scalars, **settings)
    for run in spec.runs:
        yield {**{k: v for k, v in run.items() if k != "label"}, **spec.budget}


class _Where:
    """Builds errors that name the file, the key, its line and what is valid."""

    def __init__(self, source: str, text: str):
        self.source, self.lines = source, text.splitlines()

    def line_of(self, key: str) -> str:
        leaf = key.split(".")[-1].split("[")[0]
        header = key.split(".")[0].split("[")[0]
        in_table = None
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                in_table = stripped.strip("[]").strip()
            if stripped.split("=")[0].strip() == leaf and "=" in stripped:
                if "." not in key or (in_table or "").startswith(header) or in_table is None:
                    return f" (line {number})"
        return ""

    def fail(self, key, value, expected):
        raise SpecError(f"{self.source}: key '{key}'{self.line_of(key)}: got {value!r}; expected {expected}")

    def keys(self, table: dict, valid, prefix: str):
        for key in table:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                full = f"{prefix}.{key}" if prefix else key
                raise SpecError(f"{self.source}: unknown key '{full}'{self.line_of(full)}{hint} "
                                f"(valid: {', '.join(valid)})")

    def string(self, table, key, required=False, default=None, prefix=""):
        if key not in table:
            if required:
                raise SpecError(f"{self.source}: missing required key '{prefix}{key}'")
            return default
        if not isinstance(table[key], str):
            self.fail(prefix + key, table[key], "a string")
        return table[key]

    def table(self, raw, key, required=False):
        if key not in raw:
            if required:
                raise SpecError(f"{self.source}: missing required key '{key}' (add [{key}.NAME] tables)")
            return {}
        if not isinstance(raw[key], dict):
            self.fail(key, raw[key], f"a table ([{key}])")
        return raw[key]

    def choice(self, key, value, valid):
        if value not in valid:
            close = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.fail(key, value, f"one of {', '.join(valid)}{hint}")
        return value

    def integer(self, table, key, prefix="", default=None):
        value = table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(prefix + key, value, "an integer")
        return value

    def positive(self, table, key, kind, prefix=""):
        value = table.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if kind is int:
            ok = ok and isinstance(value, int)
        if not ok:
            self.fail(prefix + key, value, "a positive integer" if kind is int else "a positive number")
        return value

    def list_of(self, table, key, kind, default=()):
        if key not in table:
            return tuple(default)
        values = table[key]
        if not isinstance(values, list):
            self.fail(key, values, f"a list of {kind.__name__}s, e.g. {key} = [...]")
        if not values:
            self.fail(key, values, f"a non-empty list of {kind.__name__}s")
        for value in values:
            if not isinstance(value, kind) or isinstance(value, bool):
                self.fail(key, value, f"{kind.__name__} values only")
        if len(set(values)) != len(values):
            self.fail(key, values, "no repeated values")
        return tuple(values)

    def setting(self, key, value):
        leaf = key.split(".")[-1]
        if leaf == "loss":
            return self.choice(key, value, LOSSES)
        if leaf in ("schedule", "schedule_every"):  # RunConfig checks the name and its arguments
            return self.string({leaf: value}, leaf, prefix=key[: -len(leaf)])
        if leaf == "schedule_args":
            if not isinstance(value, dict):
                self.fail(key, value, "a table of schedule arguments, e.g. schedule_args = { gamma = 0.7 }")
            return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        if leaf == "val_fraction":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                self.fail(key, value, "a number in [0, 1) (0: no validation split)")
            return float(value)
        if leaf == "split_seed":
            if not is_seed(value):
                self.fail(key, value, SEED_RANGE)
            return value
        if leaf == "vary":  # kept as RunConfig logs it: "init,order,data"
            if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)
                    and set(value) <= set(VARY_PARTS) and len(set(value)) == len(value)):
                self.fail(key, value, f"a non-empty list of {', '.join(VARY_PARTS)} without repeats, e.g. "
                          "vary = [\"init\", \"order\", \"data\"] (default: [\"init\", \"order\"])")
            return ",".join(part for part in VARY_PARTS if part in value)
        if leaf in ("zero_grad", "shuffle"):
            if not isinstance(value, bool):
                self.fail(key, value, "true or false")
            return value
        if leaf == "clip_grad_norm":
            return self.positive({leaf: value}, leaf, float, prefix=key[: -len(leaf)])
        return self.positive({leaf: value}, leaf, int, prefix=key[: -len(leaf)])

    def objective(self, spec: Spec, key: str):
        """The metric must be one that every run of the spec logs at its end (its problem's task and
        splits decide which: objectives.final_metric_names); a pruner must see it at each evaluation."""
        default_val_fraction = RunConfig.__dataclass_fields__["val_fraction"].default
        pruning = spec.search is not None and spec.search.pruner != "none"
        for problem_name, val_fraction in dict.fromkeys(
                (c["problem"], c.get("val_fraction", default_val_fraction)) for c in _every_config(spec)):
            problem, has_validation = resolve_problem(problem_name), val_fraction > 0
            logged = final_metric_names(problem.task, problem.has_optimum, has_validation)
            if spec.metric not in logged:
                close = difflib.get_close_matches(spec.metric, logged, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                split = "" if has_validation else " without a validation split (val_fraction = 0)"
                self.fail(key, spec.metric, f"a metric that {problem.task} problem '{problem_name}' logs at the end "
                          f"of a run{split}: {', '.join(logged)}{hint}")
            if pruning and evaluation_metric(spec.metric, has_validation) is None:
                self.fail("search.pruner", spec.search.pruner,
                          f"\"none\" with metric {spec.metric}: evaluations do not measure it (they use the "
                          f"{'validation' if has_validation else 'whole training'} split), so a pruner would never "
                          "see it")

    def problem(self, key, name):
        if not isinstance(name, str):
            self.fail(key, name, "a problem name or 'package.module:problem'")
        try:
            resolve_problem(name)  # imports a path here, so that a bad one fails before anything is written
        except UsageError as error:
            raise SpecError(f"{self.source}: key '{key}'{self.line_of(key)}: {error}") from None
        return name

    def rest(self, key, value) -> dict:
        if not isinstance(value, dict):
            self.fail(key, value, f"a table: {REST_EXAMPLE}")
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}

    def check_optimizer(self, key, name, fixed, lr=None, arguments_key=None, searched=(), rest=None):
        """Types, and with `lr` the optimizer built once: an error names the argument's own key."""
        try:
            if lr is not None:  # the rest optimizer first: without it a matrices-only one fails on a bias
                rest = check_rest(name, rest or {}, lr)
        except UsageError as error:
            rest_key = f"{arguments_key or key}.rest"
            raise SpecError(f"{self.source}: key '{rest_key}'{self.line_of(rest_key)}: {error}") from None
        try:
            optimizer_arguments(name, fixed, lr=lr, rest=rest)
        except OptimizerArgumentError as error:
            if not error.arguments:
                raise SpecError(f"{self.source}: key '{key}'{self.line_of(key)}: {error.for_source('toml')}") from None
            argument = error.arguments[0]
            full = f"{arguments_key or key}{'.search' if argument in searched else ''}.{argument}"
            raise SpecError(f"{self.source}: key '{full}'{self.line_of(full)}: {error.for_source('toml')}") from None
        except UsageError as error:
            raise SpecError(f"{self.source}: key '{key}'{self.line_of(key)}: {error}") from None

    def lr_grid(self, key, value) -> tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [value]
        elif isinstance(value, list):
            if not value:
                self.fail(key, value, "a non-empty list of learning rates")
            values = value
        elif isinstance(value, dict) and set(value) == {"log", "points"}:
            bounds, points = value["log"], value["points"]
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in bounds)
                    and bounds[0] < bounds[1]):
                self.fail(key, value, "log = [low, high] with 0 < low < high")
            if not isinstance(points, int) or isinstance(points, bool) or points < 1:
                self.fail(key, value, "points = a positive integer")
            if points == 1:
                return (float(bounds[0]),)
            ratio = math.log(bounds[1] / bounds[0]) / (points - 1)
            return tuple(float(f"{bounds[0] * math.exp(ratio * i):.6g}") for i in range(points))
        else:
            self.fail(key, value, "a list [0.01, 0.1], one number, or { log = [1e-4, 1e-1], points = 7 }")
        for lr in values:
            if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
                self.fail(key, lr, "learning rates > 0")
        if len(set(values)) != len(values):
            self.fail(key, values, "no repeated learning rates")
        return tuple(float(lr) for lr in values)

    def optimizer(self, label, entry, searching: bool) -> OptimizerPlan:
        key = f"optimizers.{label}"
        if not isinstance(entry, dict):
            self.fail(key, entry, f"a table [optimizers.{label}] with lr = ...")
        name = entry.get("optimizer", label)
        if not isinstance(name, str):
            self.fail(f"{key}.optimizer", name, "a registry name or 'package.module:Class'")
        if name not in OPTIMIZERS and ":" not in name:
            close = difflib.get_close_matches(name, list(OPTIMIZERS), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SpecError(f"{self.source}: unknown optimizer '{name}' in [{key}]{self.line_of(label)}{hint}; "
                            f"valid: {', '.join(OPTIMIZERS)}, or optimizer = \"package.module:Class\"")
        space = {}
        if "search" in entry:
            table = entry["search"]
            if not isinstance(table, dict):
                self.fail(f"{key}.search", table, "a table of argument = { low, high, log }")
            for argument, bounds in table.items():
                if not (isinstance(bounds, dict) and {"low", "high"} <= set(bounds) <= {"low", "high", "log"}
                        and all(isinstance(bounds[b], (int, float)) and not isinstance(bounds[b], bool)
                                for b in ("low", "high")) and 0 < bounds["low"] < bounds["high"]):
                    self.fail(f"{key}.search.{argument}", bounds, "{ low = a, high = b, log = true } with 0 < a < b")
                space[argument] = (float(bounds["low"]), float(bounds["high"]), bool(bounds.get("log", False)))
        elif searching:
            space = dict(OPTIMIZERS[name].space) if name in OPTIMIZERS else {}
        if searching and "lr" not in space:
            raise SpecError(f"{self.source}: [{key}] needs a search range for lr: [{key}.search] lr = "
                            "{ low = 1e-4, high = 1e-1, log = true }")
        if "lr" in entry and searching:
            raise SpecError(f"{self.source}: key '{key}.lr'{self.line_of(key + '.lr')}: a [search] spec searches lr; "
                            f"give its range as [{key}.search] lr = {{ low = 1e-4, high = 1e-1, log = true }}")
        if "lr" not in entry and not searching:
            raise SpecError(f"{self.source}: missing required key '{key}.lr' (a grid, e.g. lr = [0.01, 0.1]; "
                            "a learning-rate-free method such as Prodigy: lr = [1.0])")
        lrs = self.lr_grid(f"{key}.lr", entry["lr"]) if "lr" in entry else ()
        fixed, grid = {}, {}
        for argument, value in entry.items():
            if argument in ("lr", "optimizer", "search", "rest"):
                continue
            values = self.grid_axis(f"{key}.{argument}", value, _optimizer_takes_one_scalar(name, argument))
            if values is None:
                fixed[argument] = tuple(value) if isinstance(value, list) else value
            elif len(values) == 1:
                fixed[argument] = values[0]
            else:
                grid[argument] = values
        if grid and searching:
            argument = next(iter(grid))
            self.fail(f"{key}.{argument}", entry[argument], f"one value: a [search] spec searches rather than grids; "
                      f"give a range as [{key}.search] {argument} = {{ low = …, high = … }}")
        rest = self.rest(f"{key}.rest", entry.get("rest", {}))
        lr = lrs[0] if lrs else space["lr"][0] if "lr" in space else None
        searched = [a for a in space if a != "lr"]
        plan = OptimizerPlan(label, name, lrs, fixed, space, rest, grid)
        for arguments in plan.argument_sets():  # each grid combination built once, so a bad value fails now
            for end in (0, 1):  # both ends of a searched argument's range
                self.check_optimizer(key, name, {**arguments, **{a: space[a][end] for a in searched}}, lr, key,
                                     searched, rest)
        return plan

    def grid_axis(self, key, value, takes_one_scalar: bool) -> tuple | None:
        """The values of an argument given as a grid axis, or None where the list is one value.

        A list of lists is always a grid; a flat list is one where the argument takes one number, integer,
        flag or string (weight_decay = [0.0, 0.1]), and one value where its value is itself a list
        (betas = [0.9, 0.999], milestones = [30, 60]) or of a type the signature does not say.
        """
        if not isinstance(value, list) or not (takes_one_scalar or (value and all(isinstance(v, list) for v in value))):
            return None
        if not value:
            self.fail(key, value, "one value, or a non-empty list of values (a grid axis)")
        values = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if len(set(map(repr, values))) != len(values):
            self.fail(key, value, "a grid without repeated values")
        return values

    def schedule_grid(self, raw, settings, searching: bool) -> dict:
        """The schedule arguments given as grid axes, taken out of settings["schedule_args"]."""
        given = raw.get("schedule_args")
        if not isinstance(given, dict):
            return {}
        try:
            factory = schedule_factory(settings.get("schedule", "constant"))
        except UsageError:
            factory = None  # "constant" or a bad name: RunConfig says what is wrong
        grid = {}
        for argument, value in given.items():
            values = self.grid_axis(f"schedule_args.{argument}", value,
                                    factory is not None and _takes_one_scalar(factory, argument, {}))
            if values is None:
                continue
            if len(values) == 1:
                settings["schedule_args"][argument] = values[0]
                continue
            if searching:
                self.fail(f"schedule_args.{argument}", value, "one value: a [search] spec does not take grids")
            grid[argument] = values
            del settings["schedule_args"][argument]
        return grid


SCALAR_TYPES = (bool, int, float, str)
# a string annotation (a module with `from __future__ import annotations`, torch's schedulers) of one scalar
SCALAR_ANNOTATION = re.compile(r"(?:Optional\[)?(?:bool|int|float|str)\]?(?: \| (?:None|Tensor|torch\.Tensor))*")


def _optimizer_takes_one_scalar(name: str, argument: str) -> bool:
    try:
        cls = resolve_optimizer_class(name)
    except UsageError:
        return False  # check_optimizer names what is wrong
    return _takes_one_scalar(cls, argument, OPTIMIZERS[name].defaults if name in OPTIMIZERS else {})


def _takes_one_scalar(factory, argument: str, defaults: dict) -> bool:
    """Whether `argument` of `factory` (an optimizer class, a schedule) takes one number, integer, flag or
    string, by its default (the registry's first) or else its annotation: then a flat list is a grid axis."""
    try:
        parameter = inspect.signature(factory).parameters.get(argument)
    except (TypeError, ValueError):
        return False
    default = defaults.get(argument, parameter.default if parameter is not None else None)
    if isinstance(default, SCALAR_TYPES):
        return True
    if parameter is None:
        return False
    annotation = parameter.annotation
    if isinstance(annotation, str):
        return SCALAR_ANNOTATION.fullmatch(annotation.strip()) is not None
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = [m for m in (typing.get_args(annotation) if union else (annotation,))
               if m is not type(None) and getattr(m, "__name__", "") != "Tensor"]
    return bool(members) and all(m in SCALAR_TYPES for m in members)


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
