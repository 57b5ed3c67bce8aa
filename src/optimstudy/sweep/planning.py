"""From a spec to the trials it asks for, and what a changed spec adds to a study.

    spec = load_spec("experiments/quickstart.toml")
    planned, skipped = plan(spec)          # every trial of the first phase; absent devices counted
    added, differing = compare_identity(old_identity, spec_identity(spec))

One trial is one run: one configuration x one seed x one device. A grid plans each
configuration (every lr with every combination of the optimizer's and the schedule's grid
arguments, e.g. weight_decay = [0.0, 0.1]; [[runs]] take neither grid); a search plans each
optimizer's trial budget with the optimizer fixed (the sampler chooses the rest); confirmation
plans each optimizer's best configuration again on new seeds once tuning is done.
"""
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace

from optimstudy.errors import UsageError
from optimstudy.run.config import RunConfig
from optimstudy.run.devices import available_devices, device_is_present, resolve_device
from optimstudy.sweep.spec import GRID_SETTINGS, Spec, config_key, config_keys_by_seed, with_seed


@dataclass(frozen=True)
class Planned:
    """One trial the spec asks for: a full config, or (search) a config whose `space` is sampled."""

    key: str  # the trial's identity (configuration and label): what "queued exactly once" is counted by
    phase: str  # "grid", "run", "search", "confirm" or "decide"
    config: RunConfig
    label: str  # the optimizer's label in the spec
    space: dict = field(default_factory=dict)
    slot: str = ""  # search: the group whose budget this trial belongs to
    round: int = 0  # decide: the round of seeds added until decided (1, 2, ...)


# A plan of more trials than this needs `max_trials = N` in the spec: a grid that multiplies out to
# 100,000 trials by mistake (lrs x seeds x batch sizes) must not start a day of compute unasked.
MAX_TRIALS_UNASKED = 10_000


def plan(spec: Spec) -> tuple[list[Planned], dict[str, int]]:
    """Every trial of the first phase, and how many trials each absent device would have had."""
    devices, absent = plan_devices(spec)
    planned = list(iter_plan(spec, devices))
    per_device = len(planned) // len(devices) if devices else 0
    return planned, {device: per_device for device in absent}


def plan_devices(spec: Spec) -> tuple[list[str], list[str]]:
    """(the spec's devices present here, resolved; those absent)."""
    present, absent = [], []
    for device in spec.devices:
        if device_is_present(device):
            present.append(resolve_device(device))
        else:
            absent.append(device)
    return list(dict.fromkeys(present)), absent  # "auto" and "cpu" can name the same device


def iter_plan(spec: Spec, devices: list[str]):
    """plan's trials one at a time, in plan's order (a dry run of a large plan shows the first few)."""
    for problem in spec.problems:
        for settings in spec.grid_settings():
            for optimizer in spec.optimizers:
                for device in devices:
                    yield from _optimizer_trials(spec, problem, optimizer, device, settings)
    for run in spec.runs:
        fields = {k: v for k, v in run.items() if k != "label"}
        label = run.get("label", run["optimizer"])
        for device in devices:
            for split_seed in _run_split_seeds(spec, run):
                for seed in spec.seeds:
                    config = RunConfig(**{**fields, "split_seed": split_seed}, seed=seed, device=device,
                                       **spec.budget, **{k: v for k, v in spec.scalar_settings().items()
                                                         if k not in fields})
                    yield Planned(config_key(config, label), "run", config, label)


def _run_split_seeds(spec: Spec, run: dict) -> tuple:
    # the spec's split_seed reaches [[runs]] as it did when it was one value: one run per value
    return (run["split_seed"],) if "split_seed" in run else spec.settings.get("split_seed", (0,))


def plan_counts(spec: Spec) -> dict[tuple[str, str], int]:
    """Trials of the first phase per (problem, optimizer label) on this machine's devices, counted
    without building them (plan's order and totals): what the size check and a dry run's summary
    read, in microseconds however large the grid."""
    devices, _ = plan_devices(spec)
    settings = math.prod(len(spec.settings[k]) for k in GRID_SETTINGS if k in spec.settings)
    schedules = math.prod(map(len, spec.schedule_grid.values()))
    counts: dict[tuple[str, str], int] = {}
    for problem in spec.problems:
        for optimizer in spec.optimizers:
            each = spec.search.trials if spec.search is not None else (
                len(optimizer.lrs) * math.prod(map(len, optimizer.grid.values())) * schedules * len(spec.seeds))
            counts[(problem, optimizer.label)] = counts.get((problem, optimizer.label), 0) + \
                each * settings * len(devices)
    for run in spec.runs:
        key = (run["problem"], run.get("label", run["optimizer"]))
        counts[key] = counts.get(key, 0) + len(devices) * len(_run_split_seeds(spec, run)) * len(spec.seeds)
    return counts


def check_plan_size(spec: Spec, total: int) -> None:
    """A plan over MAX_TRIALS_UNASKED trials, or over the spec's own max_trials, is a UsageError
    naming the count and how to allow it (before anything is planned or written)."""
    if spec.max_trials is not None and total > spec.max_trials:
        raise UsageError(f"{spec.path}: the spec plans {total:,} trials, more than its max_trials = "
                         f"{spec.max_trials:,}: set max_trials = {total} to run them all, or shrink the grid "
                         "(learning rates x seeds x grid settings x optimizers x problems); "
                         "`optimstudy sweep SPEC --dry-run` counts them")
    if spec.max_trials is None and total > MAX_TRIALS_UNASKED:
        raise UsageError(f"{spec.path}: the spec plans {total:,} trials, more than the {MAX_TRIALS_UNASKED:,} a "
                         f"sweep runs unasked: add max_trials = {total} to the spec to run them, or shrink the "
                         "grid (learning rates x seeds x grid settings x optimizers x problems); "
                         "`optimstudy sweep SPEC --dry-run` counts them")


def _optimizer_trials(spec, problem, optimizer, device, settings):
    if spec.search is None:
        # Each (lr, arguments, schedule arguments) is built and checked once, as RunConfig checks it;
        # its seeds are copies with the seed set (the spec reader checked every seed), and their keys
        # one text with the seed put in: building and checking every trial was slow on a large grid.
        for lr in optimizer.lrs:
            for opt in optimizer.argument_sets():
                for schedule_args in spec.schedule_arg_sets():
                    first = spec.base_config(problem, optimizer, lr, spec.seeds[0], device, opt, schedule_args,
                                             **settings)
                    keys = config_keys_by_seed(first, optimizer.label, spec.seeds)
                    for seed, key in zip(spec.seeds, keys):
                        yield Planned(key, "grid", with_seed(first, seed), optimizer.label)
        return
    # lr here is a placeholder: each trial's sampler chooses it
    config = spec.base_config(problem, optimizer, optimizer.space["lr"][0], spec.seeds[0], device, **settings)
    slot = config_key(replace(config, lr=1.0), optimizer.label)
    for index in range(spec.search.trials):
        yield Planned(f"search {index} {slot}", "search", config, optimizer.label, optimizer.space, slot)


def confirm_plan(spec: Spec, best_configs: list[tuple[str, RunConfig]]) -> list[Planned]:
    """Each (label, best configuration) again on `[confirm] seeds` new seeds."""
    if not spec.confirm_seeds:
        return []
    first_new = max(spec.seeds) + 1
    return [Planned(config_key(config, label), "confirm", config, label)
            for label, best in best_configs
            for seed in range(first_new, first_new + spec.confirm_seeds)
            for config in [replace(best, seed=seed)]]


def decide_plan(picks: list[tuple[str, RunConfig, list[int]]], round_number: int) -> list[Planned]:
    """Each (label, best configuration, seeds) of a round of seeds added until decided (results/rounds.py)."""
    return [Planned(config_key(config, label), "decide", config, label, round=round_number)
            for label, best, seeds in picks for seed in seeds for config in [replace(best, seed=seed)]]


def skip_notes(skipped: dict[str, int]) -> list[str]:
    return [f"skipped {count} trials on device '{device}': not available on this machine "
            f"(available: {', '.join(available_devices())})" for device, count in skipped.items()]


def config_json(config: RunConfig) -> dict:
    """`config` as JSON-able values (what a queued trial carries). Field by field, not asdict's deep
    copy: ~10x faster, which a 100,000-trial plan feels (argument tuples inside `opt` stay tuples;
    JSON writes them as lists, as before)."""
    values = {}
    for name in _FIELDS:
        value = getattr(config, name)
        values[name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
    return values


_FIELDS = tuple(f.name for f in fields(RunConfig))


def config_from_json(values: dict) -> RunConfig:
    values = dict(values)
    values["opt"] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.get("opt", {}).items()}
    return RunConfig(**values)


# ---- a spec name is the study's identity -----------------------------------------------------

def spec_identity(spec: Spec) -> dict:
    """What the study's results depend on, as JSON: stored with the study, compared on every rerun.

    The description and the file's path are left out: editing a comment is not a new study.
    """
    settings = dict(spec.settings)
    if len(settings.get("split_seed", ())) == 1:  # one value stays a number, as before split_seed could be a list
        settings["split_seed"] = settings["split_seed"][0]
    identity = {
        "problems": spec.problems, "budget": spec.budget, "metric": spec.metric, "direction": spec.direction,
        "settings": settings, "devices": spec.devices, "confirm_seeds": spec.confirm_seeds,
        "search": asdict(spec.search) if spec.search else None, "runs": spec.runs, "seeds": spec.seeds,
        # rest, grid and schedule_grid only where given: a study from before them keeps its identity
        "optimizers": {o.label: {"optimizer": o.optimizer, "lr": o.lrs, "fixed": o.fixed, "space": o.space,
                                 **({"rest": o.rest} if o.rest else {}), **({"grid": o.grid} if o.grid else {})}
                       for o in spec.optimizers},
        **({"schedule_grid": spec.schedule_grid} if spec.schedule_grid else {}),
    }
    return json.loads(json.dumps(identity, default=str))


def compare_identity(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(what `new` adds to `old`, the keys where it differs otherwise).

    Allowed additions: new learning rates, new values of a grid argument (the optimizer's or the
    schedule's), new seeds, new optimizers. Everything else (problem, budget, metric, direction,
    settings, search, a removed value, a new grid argument) must be equal.
    """
    added, differing = [], []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if key == "seeds" and before is not None and after is not None:
            _extend_list(key, before, after, added, differing)
        elif key == "schedule_grid" and before is not None and after is not None and set(before) == set(after):
            _extend_grid("schedule_args", before, after, added, differing)
        elif key == "optimizers" and before is not None and after is not None:
            for label in sorted(set(before) | set(after)):
                if label not in after:
                    differing.append(f"optimizers.{label} (removed)")
                elif label not in before:
                    added.append(f"optimizer {label}")
                else:
                    for part in sorted(set(before[label]) | set(after[label])):
                        was, now = before[label].get(part), after[label].get(part)
                        if part == "lr" and was is not None and now is not None:
                            _extend_list(f"optimizers.{label}.lr", was, now, added, differing)
                        elif part == "grid" and was is not None and now is not None and set(was) == set(now):
                            _extend_grid(f"optimizers.{label}", was, now, added, differing)
                        elif was != now:
                            differing.append(f"optimizers.{label}.{part}")
        elif before != after:
            differing.append(key)
    return added, differing


def _extend_grid(key, before: dict, after: dict, added, differing) -> None:
    """Each grid argument's values, compared as text: a value may be a list (betas pairs)."""
    for argument in sorted(after):
        _extend_list(f"{key}.{argument}", [json.dumps(v) for v in before[argument]],
                     [json.dumps(v) for v in after[argument]], added, differing)


def _extend_list(key, before, after, added, differing) -> None:
    if not set(before) <= set(after):
        differing.append(f"{key} (removed {', '.join(map(str, sorted(set(before) - set(after))))})")
    elif set(after) - set(before):
        added.append(f"{key} {', '.join(map(str, sorted(set(after) - set(before))))}")
