"""Reading a spec: `load_spec(path)` parses the TOML and validates every key, with the file, the key,
its line and what is valid in each error (spec_fields.Where); the result is a frozen spec.Spec.

    spec = load_spec("experiments/quickstart.toml")
"""
import tomllib
from pathlib import Path

from optimstudy.errors import UsageError
from optimstudy.results.objectives import default_direction
from optimstudy.run.config import SEED_RANGE, RunConfig, is_seed
from optimstudy.run.devices import DEVICE_CHOICES
from optimstudy.sweep.spec import (
    DECIDE_KEYS,
    DIRECTIONS,
    GRID_SETTINGS,
    NAME_PATTERN,
    PRUNERS,
    RUN_KEYS,
    SAMPLERS,
    SCALAR_SETTINGS,
    SEARCH_KEYS,
    TOP_KEYS,
    Decide,
    Search,
    Spec,
    SpecError,
    every_config,
)
from optimstudy.sweep.spec_fields import Where


def load_spec(path) -> Spec:
    path = Path(path)
    if not path.is_file():
        near_files = sorted(p.name for p in path.parent.glob("*.toml")) if path.parent.is_dir() else []
        hint = f"; specs in {path.parent}/: {', '.join(near_files)}" if near_files else ""
        raise SpecError(f"spec file '{path}' not found{hint}")
    text = _read_utf8(path)
    try:
        raw = tomllib.loads(text)
        return parse_spec(raw, str(path), text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: malformed TOML: {error}") from None
    except RecursionError:  # the parser, or the checks, walking arrays or tables nested thousands deep
        raise SpecError(f"{path}: arrays or tables nested too deeply for Python to read (line "
                        f"{_deepest_line(text)}); a spec nests a few levels at most") from None


def _deepest_line(text: str) -> int:
    """The line where brackets and braces first nest deepest (quoted text is not skipped: a guide)."""
    depth, deepest, line = 0, 0, 1
    for number, row in enumerate(text.splitlines(), 1):
        for char in row:
            depth += (char in "[{") - (char in "]}")
            if depth > deepest:
                deepest, line = depth, number
    return line


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
    where = Where(source, text)
    where.keys(raw, TOP_KEYS, "")
    name = where.string(raw, "name", required=True)
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        # the name is a file name (the study's journal, the artifact folder) and a database key
        where.fail("name", name, "1-100 characters: letters, digits, '.', '_', '-' or spaces (letters of any script, "
                   "e.g. 'études'), starting with a letter or digit; no '/', ':' or other punctuation (it names "
                   "files and the study)")

    if ("problem" in raw) == ("problems" in raw):
        where.fail("problem", raw.get("problem", raw.get("problems")),
                   "exactly one of problem = \"…\" or problems = [...]")
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

    decide = None
    if "decide" in raw:
        from optimstudy.results.comparison import MIN_SEEDS  # on first use: it imports pandas and scipy

        table = where.table(raw, "decide")
        where.keys(table, DECIDE_KEYS, "decide")
        defaults = Decide()
        decide = Decide(
            max_seeds=where.positive({"max_seeds": defaults.max_seeds, **table}, "max_seeds", int, prefix="decide."),
            seeds_per_round=where.positive({"seeds_per_round": defaults.seeds_per_round, **table}, "seeds_per_round",
                                           int, prefix="decide."),
            time_budget_s=where.positive(table, "time_budget_s", float, prefix="decide.")
            if "time_budget_s" in table else None)
        if decide.max_seeds < MIN_SEEDS:
            where.fail("decide.max_seeds", decide.max_seeds, f"at least {MIN_SEEDS}: fewer seeds never decide a pair")

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
            run["label"] = where.label(f"{key}.label", str(entry["label"]))
        runs.append(run)

    stack_seeds = raw.get("stack_seeds", False)
    if not isinstance(stack_seeds, bool):
        where.fail("stack_seeds", stack_seeds, "true or false (true: train a configuration's seeds as one batched "
                   "model where the optimizer is elementwise)")
    max_stack = where.positive(raw, "max_stack", int) if "max_stack" in raw else None
    trial_timeout_s = where.positive(raw, "trial_timeout_s", float) if "trial_timeout_s" in raw else None
    max_trials = where.positive(raw, "max_trials", int) if "max_trials" in raw else None

    spec = Spec(path=source, name=name, problems=tuple(problems), budget=budget, seeds=tuple(seeds),
                devices=tuple(devices), settings=settings, optimizers=optimizers, metric=metric,
                direction=direction, search=search, confirm_seeds=confirm_seeds, decide=decide, runs=tuple(runs),
                description=str(raw.get("description", "")), text=text, schedule_grid=schedule_grid,
                stack_seeds=stack_seeds, max_stack=max_stack, trial_timeout_s=trial_timeout_s, max_trials=max_trials)
    for config in every_config(spec):  # whatever RunConfig itself rejects, reject here, before any run
        try:
            RunConfig(**config)
        except UsageError as error:
            raise SpecError(f"{source}: {error}") from None
    where.objective(spec, "search.metric" if "metric" in raw.get("search", {}) else "metric")
    return spec
