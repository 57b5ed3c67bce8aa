"""One field of a spec at a time (`Where`): its type, its range, its valid names, and an error that
names the file, the key, its line and what is valid."""
import difflib
import inspect
import math
import re
import types
import typing

from optimstudy.errors import UsageError
from optimstudy.problems.losses import LOSSES
from optimstudy.problems.optimizers import (
    OPTIMIZERS,
    OptimizerArgumentError,
    optimizer_arguments,
    resolve_optimizer_class,
)
from optimstudy.problems.parameter_groups import REST_EXAMPLE, check_rest
from optimstudy.problems.registry import resolve_problem
from optimstudy.problems.schedules import schedule_factory
from optimstudy.results.objectives import evaluation_metric, final_metric_names
from optimstudy.run.config import SEED_RANGE, VARY_PARTS, RunConfig, is_seed
from optimstudy.sweep.spec import LABEL_RULE, OptimizerPlan, Spec, SpecError, every_config, valid_label


class Where:
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
                (c["problem"], c.get("val_fraction", default_val_fraction)) for c in every_config(spec)):
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

    def label(self, key: str, label) -> str:
        """An optimizer's label, checked (LABEL_RULE); named in the error as repr shows it, cut if long."""
        if not valid_label(label):
            shown = repr(label) if len(str(label)) <= 60 else f"{str(label)[:40]!r}… ({len(label)} characters)"
            line = next((f" (line {n})" for n, text in enumerate(self.lines, 1) if str(label) in text), "")
            raise SpecError(f"{self.source}: optimizer label {shown} ({key}){line}: expected {LABEL_RULE}")
        return label

    def optimizer(self, label, entry, searching: bool) -> OptimizerPlan:
        key = f"optimizers.{label}"
        self.label("an [optimizers.LABEL] table", label)
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
