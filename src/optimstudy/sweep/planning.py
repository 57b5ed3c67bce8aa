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
from dataclasses import asdict, dataclass, field, replace

from optimstudy.run.config import RunConfig
from optimstudy.run.devices import available_devices, device_is_present, resolve_device
from optimstudy.sweep.spec import Spec, config_key


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


def plan(spec: Spec) -> tuple[list[Planned], dict[str, int]]:
    """Every trial of the first phase, and how many trials each absent device would have had."""
    planned, absent, devices = [], [], []
    for device in spec.devices:
        if device_is_present(device):
            devices.append(resolve_device(device))
        else:
            absent.append(device)
    devices = list(dict.fromkeys(devices))  # "auto" and "cpu" can name the same device
    for problem in spec.problems:
        for settings in spec.grid_settings():
            for optimizer in spec.optimizers:
                for device in devices:
                    planned += _optimizer_trials(spec, problem, optimizer, device, settings)
    for run in spec.runs:
        fields = {k: v for k, v in run.items() if k != "label"}
        label = run.get("label", run["optimizer"])
        # the spec's split_seed reaches [[runs]] as it did when it was one value: one run per value
        split_seeds = (run["split_seed"],) if "split_seed" in run else spec.settings.get("split_seed", (0,))
        for device in devices:
            for split_seed in split_seeds:
                for seed in spec.seeds:
                    config = RunConfig(**{**fields, "split_seed": split_seed}, seed=seed, device=device,
                                       **spec.budget, **{k: v for k, v in spec.scalar_settings().items()
                                                         if k not in fields})
                    planned.append(Planned(config_key(config, label), "run", config, label))
    per_device = len(planned) // len(devices) if devices else 0
    return planned, {device: per_device for device in absent}


def _optimizer_trials(spec, problem, optimizer, device, settings) -> list[Planned]:
    if spec.search is None:
        return [Planned(config_key(config, optimizer.label), "grid", config, optimizer.label)
                for lr in optimizer.lrs for opt in optimizer.argument_sets()
                for schedule_args in spec.schedule_arg_sets() for seed in spec.seeds
                for config in [spec.base_config(problem, optimizer, lr, seed, device, opt, schedule_args, **settings)]]
    # lr here is a placeholder: each trial's sampler chooses it
    config = spec.base_config(problem, optimizer, optimizer.space["lr"][0], spec.seeds[0], device, **settings)
    slot = config_key(replace(config, lr=1.0), optimizer.label)
    return [Planned(f"search {index} {slot}", "search", config, optimizer.label, optimizer.space, slot)
            for index in range(spec.search.trials)]


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
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


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
