"""`optimstudy run`: one configuration trained, or one run per seed of --seeds, each recorded in
MLflow (or not: --no-track), a summary line per run printed.

    from optimstudy.run.command import RunOptions, run
    run({"problem": "linreg", "optimizer": "adam", "lr": 0.1, "steps": 200}, RunOptions(track=False))
    # what `optimstudy run --problem linreg --optimizer adam --lr 0.1 --steps 200 --no-track` runs

In this order, so that bad input costs seconds and the slow parts overlap: the flags are checked;
the MLflow writer starts (it imports MLflow, which is slow, on the other core; it opens the store
only when ensure_store asks, so bad input found before leaves none behind); then, within the
run's time limits (processes.Watchdog), torch is imported, the configuration resolved, the data
loaded and the model checked, the store made ready, and the run trained (run.runner.execute;
execute_seeds for --seeds).
That order is why this module imports torch's side (problems/, run.config, run.runner) in functions.
"""
import json
import sys
from dataclasses import dataclass, replace

from optimstudy.errors import UsageError
from optimstudy.processes import Watchdog, check_trial_timeout, stall_timeout_s
from optimstudy.progress import progress_bar
from optimstudy.tag_names import TAG_KIND
from optimstudy.tracking.client import DEFAULT_EXPERIMENT, ensure_store, resolve_tracking_uri
from optimstudy.tracking.connectivity import hide_passwords
from optimstudy.tracking.writer_handle import start_writer, stop_writers


@dataclass(frozen=True)
class RunOptions:
    """What `optimstudy run` was asked besides the configuration: its other flags."""
    seeds: str | None = None  # --seeds as typed: "0,1,2", "0-7"; None: the configuration's one seed
    stack_seeds: bool = False  # train the seeds together as one batched model, where the optimizer allows
    max_stack: int | None = None  # at most this many seeds in one stack; None: runner.execute_seeds's default
    data_dir: str | None = None  # None: $OPTIMSTUDY_DATA_DIR, else ~/.cache/optimstudy/data
    save_model: bool = False
    as_json: bool = False  # print one JSON object as the last line
    trial_timeout_s: float | None = None  # None: no limit but the stall guard ($OPTIMSTUDY_STALL_TIMEOUT_S)
    track: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db
    experiment: str | None = None  # None: DEFAULT_EXPERIMENT
    seed_list: tuple[int, ...] | None = None  # the seeds of `seeds`, once checked (run)


def run(fields: dict, options: RunOptions | None = None) -> int:
    """Train, record and summarise; returns the exit code (0). `fields`: RunConfig's keyword arguments
    as the flags give them: `opt`, `rest` and `schedule_args` as lists of KEY=VALUE text (--opt, --rest,
    --schedule-arg); `seed` None: 0, or each of `options.seeds`; `update_norm_every` None: RunConfig's default."""
    options = options or RunOptions()
    seeds, seed = options.seeds, fields.get("seed")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if seed_list is not None and seed is not None:
        raise UsageError(f"give --seed {seed} or --seeds {seeds}, not both (--seeds 0,1,2 makes one run per seed)")
    if options.stack_seeds and seed_list is None:
        raise UsageError("--stack-seeds needs several seeds: --seeds 0,1,2 (or 0-7)")
    for flag, value in (("--batch-size", fields.get("batch_size")), ("--accumulate", fields.get("accumulate")),
                        ("--max-stack", options.max_stack)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    check_trial_timeout(options.trial_timeout_s)
    stall_timeout_s()  # a bad OPTIMSTUDY_STALL_TIMEOUT_S: exit 2 now
    options = replace(options, seed_list=None if seed_list is None else tuple(seed_list))
    if not options.track:
        return _run(fields, options, None)

    tracking_uri = resolve_tracking_uri(options.tracking_uri)
    # the writer imports MLflow, which is slow, on the other core while we import torch and load the data;
    # it opens the store only when ensure_store asks, so bad input found before leaves none behind
    start_writer(tracking_uri)
    try:
        return _run(fields, options, (tracking_uri, options.experiment or DEFAULT_EXPERIMENT))
    finally:
        stop_writers(wait=False)


def _run(fields: dict, options: RunOptions, tracking_at: tuple[str, str] | None) -> int:
    # the limits hold from here: a problem whose data or model never returns must not hang the command
    with Watchdog(options.trial_timeout_s, stall_timeout_s()) as watchdog:
        return _run_watched(fields, options, tracking_at, watchdog)


def _run_watched(fields: dict, options: RunOptions, tracking_at: tuple[str, str] | None, watchdog: Watchdog) -> int:
    config = run_config(fields)
    # torch: after the writer starts (the module's docstring says why)
    from optimstudy.problems.parameter_groups import check_hidden_matrices, split_parameters
    from optimstudy.problems.registry import resolve_problem  # torch: after the writer starts
    from optimstudy.run.runner import Tracking, check_model, execute, load_data  # torch: after the writer starts

    data = load_data(config, options.data_dir)
    check_model(config, data)  # a model that cannot take the data fails here, not as a FAILED run
    if config.rest:  # a run with a rest optimizer needs hidden matrices: found out before anything is written
        model = resolve_problem(config.problem).build_model(data.info)
        check_hidden_matrices(split_parameters(model)[0], config.optimizer, config.problem)
    tracking = None
    if tracking_at is not None:
        tracking = Tracking(*tracking_at, tags={TAG_KIND: "run"}, save_model=options.save_model)
        ensure_store(tracking.tracking_uri, start_writer(tracking.tracking_uri))

    if options.seed_list is not None:
        return _run_seeds(config, options, tracking)
    with progress_bar(f"{config.problem} {config.optimizer} lr={config.lr:g}", unit="step") as progress:
        history, run_id = execute(config, tracking, data=data, progress=progress, watchdog=watchdog)
    print_run_summary(history, run_id, tracking)
    if options.as_json:
        print(json.dumps({"run_id": run_id, **history.summary()}))
    return 0


def run_config(fields: dict):
    """The resolved RunConfig of `fields` (see run): --opt, --rest and --schedule-arg parsed."""
    from optimstudy.problems.optimizers import parse_opt, parse_opt_value  # torch: after the writer starts
    from optimstudy.run.config import RunConfig  # torch: after the writer starts

    fields = dict(fields)
    if fields.get("update_norm_every") is None:
        fields.pop("update_norm_every", None)
    return RunConfig(**{
        **fields, "opt": parse_opt(fields.get("opt", [])), "rest": parse_opt(fields.get("rest", []), "--rest"),
        "schedule_args": _schedule_args(fields.get("schedule_args", []), parse_opt_value),
        "seed": 0 if fields.get("seed") is None else fields["seed"],
    }).resolved()


def _run_seeds(config, options: RunOptions, tracking) -> int:
    """--seeds: one run per seed, stacked with --stack-seeds where the mathematics allows."""
    from optimstudy.run.runner import execute_seeds  # torch: after the writer starts

    configs = [replace(config, seed=seed) for seed in options.seed_list]
    label = f"{config.problem} {config.optimizer} lr={config.lr:g} seeds {options.seeds}"
    with progress_bar(label, unit="step") as progress:
        results = execute_seeds(configs, tracking, stack=options.stack_seeds, max_stack=options.max_stack,
                                data_dir=options.data_dir, progress=progress,
                                say=lambda line: print(f"note: {line}", file=sys.stderr))
    for history, run_id in results:
        print(f"seed {history.config.seed}: ", end="", file=sys.stderr)
        print_run_summary(history, run_id, tracking)
    if options.as_json:
        print(json.dumps({"runs": [{"run_id": run_id, **history.summary()} for history, run_id in results]}))
    return 0


def parse_seeds(text: str) -> list[int]:
    """--seeds: '0,1,2' or '0-7' (or both, '0-3,10'), each a seed once."""
    seeds = []
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(low)]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds must list distinct seeds (integers from 0), e.g. --seeds 0,1,2 or --seeds 0-7; "
                         f"got {text!r}")
    return seeds


def _schedule_args(items, parse_value) -> dict:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--schedule-arg '{item}' is not KEY=VALUE (e.g. --schedule-arg gamma=0.7, "
                             "--schedule-arg milestones=2,4)")
        parsed[key.strip()] = parse_value(value)
    return parsed


def print_run_summary(history, run_id, tracking) -> None:
    final = history.final
    parts = [f"{history.steps[-1] if history.steps else 0} steps in {history.wall_s:.2f} s "
             f"({history.samples_per_s:,.0f} samples/s)"]
    if history.diverged:
        parts.append(f"DIVERGED at step {history.diverged_at_step}")
    for key in ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "excess_loss"):
        if final.get(key) is not None:
            value = final[key]
            parts.append(f"{key} {value:.2%}" if key.endswith("accuracy") else f"{key} {value:.4g}")
    print("; ".join(parts), file=sys.stderr)
    if history.note:
        print(f"note: {history.note}", file=sys.stderr)
    if run_id:
        print(f"tracked as run {run_id} in experiment '{tracking.experiment}' "
              f"({hide_passwords(tracking.tracking_uri)}); see it with `optimstudy ui`", file=sys.stderr)
