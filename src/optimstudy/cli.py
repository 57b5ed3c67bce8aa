"""The command line: argparse lives here only; everything inward takes a RunConfig or a Spec.

    optimstudy run --problem mnist_mlp --optimizer adam --lr 1e-3 --epochs 3
    optimstudy sweep experiments/quickstart.toml --workers 2
    optimstudy report
    optimstudy ui
"""
import argparse
import inspect
import json
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path

from optimstudy import __version__
from optimstudy.compat.python import run_exit_handlers
from optimstudy.errors import TrialTimeout, UsageError
from optimstudy.processes import Watchdog, quick_exit, stall_timeout_s
from optimstudy.progress import progress_bar
from optimstudy.sweep.check import check
from optimstudy.sweep.servers import dashboard, ui
from optimstudy.tag_names import TAG_KIND
from optimstudy.tracking.client import DEFAULT_EXPERIMENT, ensure_store, resolve_tracking_uri
from optimstudy.tracking.connectivity import hide_passwords, probe_store
from optimstudy.tracking.writer_handle import start_writer, stop_writers

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_FAILED = 1
# --storage from the environment, like --tracking-uri from MLFLOW_TRACKING_URI: a password on a
# command line is shown to every user of the machine (ps)
STORAGE_VARIABLE = "OPTIMSTUDY_STORAGE"


def add_tracking_flags(parser, *, allow_no_track=True):
    group = parser.add_argument_group("tracking")
    group.add_argument("--tracking-uri", help="MLflow URI (sqlite:///…, postgresql://…, http://…); "
                       "default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db")
    if allow_no_track:
        group.add_argument("--experiment", default=None, help="MLflow experiment name (default: optimstudy)")
        group.add_argument("--no-track", action="store_true", help="run without MLflow")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optimstudy", description=(
        "How optimizers and learning rates shape training, measured: runs, Optuna sweeps, "
        "MLflow tracking and a report."))
    parser.add_argument("--version", action="version", version=f"optimstudy {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="train one model and record every step",
                              description="Train one model: measure (loss) -> diagnose (backward) -> update (step).")
    run.add_argument("--problem", default="mnist_mlp",
                     help="see `optimstudy list problems`, or package.module:problem (default: mnist_mlp)")
    run.add_argument("--optimizer", default="sgd",
                     help="see `optimstudy list optimizers`, or package.module:Class (default: sgd)")
    run.add_argument("--lr", type=float, default=0.1, help="learning rate (default: 0.1)")
    run.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                     help="extra optimizer argument, repeatable (e.g. --opt betas=0.9,0.99)")
    run.add_argument("--rest", action="append", default=[], metavar="KEY=VALUE",
                     help="a second optimizer for all but the hidden matrices (Muon's AdamW), repeatable: "
                          "optimizer=adamw, lr=3e-4 or lr_ratio=0.015 (times --lr), and its arguments")
    budget = run.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, help="passes over the training split (default: 3)")
    budget.add_argument("--steps", type=int, help="optimizer updates")
    run.add_argument("--batch-size", type=int, default=64, help="examples per micro-batch (default: 64)")
    run.add_argument("--seed", type=int, help="what --vary names (default: 0)")
    run.add_argument("--seeds", metavar="LIST", help="several seeds of the same run, each its own run: "
                     "0,1,2 or 0-7 (replaces --seed)")
    run.add_argument("--stack-seeds", action="store_true", help="train --seeds together as one batched model "
                     "where the optimizer is elementwise and the model runs under vmap (else one after another, "
                     "saying why); each seed is still its own run, the same numbers as alone")
    run.add_argument("--max-stack", type=int, metavar="N", help="at most N seeds in one stack (default: 8 on a "
                     "CPU, 32 on a GPU)")
    run.add_argument("--vary", default="init,order", help="what the seed varies, of init (weights), order "
                     "(batches), data (the train/validation split) (default: init,order)")
    run.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: cpu)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: cores - 1, at least 1; recorded)")
    run.add_argument("--loss", help="see `optimstudy list losses` (default: the problem's)")
    run.add_argument("--no-zero-grad", action="store_true",
                     help="never call optimizer.zero_grad(): the lesson's bug (gradients pile up)")
    run.add_argument("--accumulate", type=int, default=1, metavar="K",
                     help="gradient accumulation: one step per K micro-batches (default: 1)")
    run.add_argument("--eval-every", type=int, help="steps between validation passes (default: each epoch)")
    run.add_argument("--clip-grad-norm", type=float, help="clip the global gradient norm to this value")
    run.add_argument("--update-norm-every", type=int, metavar="K", help="record the exact update norm every K "
                     "steps; 1: every step, ~8%% slower on a small CPU model (default: 10; loss and gradient "
                     "norm are always recorded every step)")
    run.add_argument("--schedule", default="constant", help="see `optimstudy list schedules`, a "
                     "torch.optim.lr_scheduler class, or package.module:name (default: constant)")
    run.add_argument("--schedule-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="schedule argument, repeatable (e.g. --schedule step --schedule-arg gamma=0.7)")
    run.add_argument("--schedule-every", choices=["step", "epoch"],
                     help="step the schedule per optimizer step or per epoch (default: the schedule's usual)")
    run.add_argument("--no-shuffle", action="store_true", help="take the training rows in order every epoch")
    run.add_argument("--compile", action="store_true", help="captured mode: torch.compile(mode='reduce-overhead') "
                     "over the step, CUDA graphs on a GPU (the first steps compile for seconds; recorded)")
    run.add_argument("--val-fraction", type=float, default=0.0625,
                     help="share of the training data held out for validation; 0: none (default: 0.0625)")
    run.add_argument("--split-seed", type=int, default=0, help="which rows are held out (default: 0)")
    run.add_argument("--data-dir", help="dataset root (default: $OPTIMSTUDY_DATA_DIR, else ~/.cache/optimstudy/data)")
    run.add_argument("--save-model", action="store_true", help="store the final state_dict as an artifact")
    run.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    run.add_argument("--trial-timeout", type=float, metavar="SECONDS",
                     help="end the run FAILED past this wall-clock time (default: none; a run with no training "
                          "step for $OPTIMSTUDY_STALL_TIMEOUT_S, 600 s, is ended anyway)")
    add_tracking_flags(run)

    listing = commands.add_parser("list", help="list problems, optimizers, losses or schedules")
    listing.add_argument("what", choices=["problems", "optimizers", "losses", "schedules"])

    ui = commands.add_parser("ui", help="open the MLflow UI on the tracking store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--experiment", help="print the URL of this experiment's runs table")
    add_tracking_flags(ui, allow_no_track=False)

    sweep = commands.add_parser("sweep", help="run an experiment spec as an Optuna study",
                                description="Run experiments/NAME.toml as one Optuna study and one MLflow parent run.")
    sweep.add_argument("spec", help="path to an experiment spec (TOML)")
    sweep.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default: 1)")
    sweep.add_argument("--storage", default=os.environ.get(STORAGE_VARIABLE) or None,
                       help=f"Optuna storage URL (default: ${STORAGE_VARIABLE}, else a journal file under mlruns/)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="list the trials (a plan over 200: a summary and the first 10) and exit")
    sweep.add_argument("--data-dir", help="dataset root (default: $OPTIMSTUDY_DATA_DIR)")
    sweep.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    sweep.add_argument("--until-decided", action="store_true",
                       help="after the planned seeds, add seeds to the pairs still open until each is decided "
                            "(the spec's [decide] table, else max_seeds = 20 in rounds of 5)")
    sweep.add_argument("--trial-timeout", type=float, metavar="SECONDS",
                       help="end a trial FAILED past this wall-clock time; the sweep goes on (default: the spec's "
                            "trial_timeout_s, else none; the stall guard, $OPTIMSTUDY_STALL_TIMEOUT_S, always)")
    sweep.add_argument("--restart", action="store_true",
                       help="the spec changed beyond new lrs/seeds/optimizers: keep the old study under a new "
                            "name and start this one afresh")
    add_tracking_flags(sweep, allow_no_track=False)

    dashboard = commands.add_parser("dashboard", help="open optuna-dashboard on a sweep's study")
    dashboard.add_argument("spec", nargs="?", help="experiment spec whose study to show")
    dashboard.add_argument("--storage", default=os.environ.get(STORAGE_VARIABLE) or None,
                           help=f"Optuna storage URL (default: ${STORAGE_VARIABLE}, else the sweep default)")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument("--host", default="127.0.0.1")

    report = commands.add_parser("report", help="regenerate the figures and the report page")
    report.add_argument("--experiment", action="append", dest="experiments", metavar="NAME",
                        help="experiments to draw from, repeatable (default: all)")
    report.add_argument("--out", default="analysis", help="output folder (default: analysis/)")
    report.add_argument("--no-log-to-store", action="store_true",
                        help="only read the store: do not attach the page and figures to each sweep's parent run "
                             "(by default they are logged there as artifacts under 'report/')")
    report.add_argument("--analysis", metavar="DIR",
                        help="folder of analysis scripts, one figure each, drawn instead of the built-in ones "
                             "(default: the built-in figures, plus ./analysis's scripts, which add figures or "
                             "replace a built-in one of the same file name)")
    add_tracking_flags(report, allow_no_track=False)

    check = commands.add_parser("check", help="check that a sweep's study and tracking store agree; repair")
    check.add_argument("spec", nargs="?", help="experiment spec of the sweep")
    check.add_argument("--experiment", help="MLflow experiment (default: the spec's name)")
    check.add_argument("--storage", default=os.environ.get(STORAGE_VARIABLE) or None,
                       help=f"Optuna storage URL (default: ${STORAGE_VARIABLE}, else the sweep default)")
    check.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    add_tracking_flags(check, allow_no_track=False)
    return parser


def entry() -> None:
    """The `optimstudy` command (and `python -m optimstudy`): main(), then a quick exit."""
    exit_without_teardown(main())


def exit_without_teardown(code: int | None) -> None:
    """Exit once atexit handlers have run and the streams are flushed, skipping the interpreter's
    module-by-module teardown: with torch, MLflow and pandas loaded it takes ~1 s, at the end of
    every command. With a non-daemon thread still alive, a normal exit, which waits for it."""
    if any(not thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread()):
        raise SystemExit(code)
    run_exit_handlers()
    quick_exit(0 if code is None else code)  # 0: what SystemExit(None) exits with


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the command as typed, to run again (a sweep whose own trial is stuck: sweep.command.restart_sweep)
    args.restart_argv = [sys.executable, "-m", "optimstudy", *sys.argv[1:]] if argv is None else None
    try:
        return COMMANDS[args.command](args)
    except UsageError as error:
        if args.debug:
            raise
        if args.command == "run" and hasattr(error, "for_source"):  # an optimizer argument: name it as --opt
            error = error.for_source("--opt")
        print(hide_passwords(f"optimstudy {args.command}: error: {error}"), file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `optimstudy … | head` closed our stdout: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TrialTimeout as error:  # the run is FAILED in the store, with this reason
        if args.debug:
            raise
        print(f"optimstudy {args.command}: {error}; the run is FAILED", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = {"sweep": "run the same `optimstudy sweep` command again to resume"}.get(
            args.command, "nothing was lost: finished work is in the store")
        print(f"\noptimstudy {args.command}: interrupted; {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # not the user's input: say what broke, keep the traceback for --debug
        if args.debug:
            raise
        # a driver's error can quote the store's URI, password and all
        print(hide_passwords(f"optimstudy {args.command}: failed: {type(error).__name__}: {error}\n"
                             f"(run again with --debug for the traceback)"), file=sys.stderr)
        return EXIT_FAILED


def cmd_run(args) -> int:
    args.seed_list = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.seed_list is not None and args.seed is not None:
        raise UsageError(f"give --seed {args.seed} or --seeds {args.seeds}, not both (--seeds 0,1,2 makes one run per "
                         "seed)")
    if args.stack_seeds and args.seed_list is None:
        raise UsageError("--stack-seeds needs several seeds: --seeds 0,1,2 (or 0-7)")
    for flag, value in (("--batch-size", args.batch_size), ("--accumulate", args.accumulate),
                        ("--max-stack", args.max_stack)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    check_trial_timeout(args.trial_timeout)
    stall_timeout_s()  # a bad OPTIMSTUDY_STALL_TIMEOUT_S: exit 2 now
    if args.no_track:
        return _run(args, None)

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    # the writer imports MLflow (~1.5 s) on the other core while we import torch and load the data;
    # it opens the store only when ensure_store asks, so bad input found before leaves none behind
    start_writer(tracking_uri)
    try:
        return _run(args, (tracking_uri, args.experiment or DEFAULT_EXPERIMENT))
    finally:
        stop_writers(wait=False)


def check_trial_timeout(seconds) -> None:
    if seconds is not None and not (seconds > 0 and seconds != float("inf")):
        raise UsageError(f"--trial-timeout must be a positive number of seconds, got {seconds:g}")


def _run(args, tracking_at: tuple[str, str] | None) -> int:
    # the limits hold from here: a problem whose data or model never returns must not hang the command
    with Watchdog(args.trial_timeout, stall_timeout_s()) as watchdog:
        return _run_watched(args, tracking_at, watchdog)


def _run_watched(args, tracking_at: tuple[str, str] | None, watchdog: Watchdog) -> int:
    from optimstudy.problems.optimizers import parse_opt, parse_opt_value  # on first use: it imports torch
    from optimstudy.run.config import RunConfig  # on first use: it imports torch

    config = RunConfig(
        problem=args.problem, optimizer=args.optimizer, lr=args.lr, opt=parse_opt(args.opt),
        rest=parse_opt(args.rest, "--rest"),
        epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, seed=0 if args.seed is None else args.seed,
        device=args.device, threads=args.threads, loss=args.loss, zero_grad=not args.no_zero_grad,
        accumulate=args.accumulate, eval_every=args.eval_every, clip_grad_norm=args.clip_grad_norm,
        **({} if args.update_norm_every is None else {"update_norm_every": args.update_norm_every}),
        schedule=args.schedule, schedule_args=_schedule_args(args.schedule_arg, parse_opt_value),
        schedule_every=args.schedule_every, shuffle=not args.no_shuffle, val_fraction=args.val_fraction,
        split_seed=args.split_seed, vary=args.vary, compile=args.compile,
    ).resolved()
    from optimstudy.run.runner import Tracking, check_model, execute, load_data  # on first use: it imports torch

    data = load_data(config, args.data_dir)
    check_model(config, data)  # a model that cannot take the data fails here, not as a FAILED run
    if config.rest:  # a run with a rest optimizer needs hidden matrices: found out before anything is written
        # on first use: it imports torch
        from optimstudy.problems.parameter_groups import check_hidden_matrices, split_parameters
        from optimstudy.problems.registry import resolve_problem  # on first use: it imports torch

        model = resolve_problem(config.problem).build_model(data.info)
        check_hidden_matrices(split_parameters(model)[0], config.optimizer, config.problem)
    tracking = None
    if tracking_at is not None:
        tracking = Tracking(*tracking_at)
        ensure_store(tracking.tracking_uri, start_writer(tracking.tracking_uri))

    if args.seed_list is not None:
        return _run_seeds(args, config, tracking)
    with progress_bar(f"{config.problem} {config.optimizer} lr={config.lr:g}", unit="step") as progress:
        history, run_id = execute(config, tracking, data=data, save_model=args.save_model, progress=progress,
                                  tags={TAG_KIND: "run"}, watchdog=watchdog)
    print_run_summary(history, run_id, tracking)
    if args.json:
        print(json.dumps({"run_id": run_id, **history.summary()}))
    return 0


def _run_seeds(args, config, tracking) -> int:
    """--seeds: one run per seed, stacked with --stack-seeds where the mathematics allows."""
    from optimstudy.run.runner import execute_seeds  # on first use: it imports torch

    configs = [replace(config, seed=seed) for seed in args.seed_list]
    label = f"{config.problem} {config.optimizer} lr={config.lr:g} seeds {args.seeds}"
    with progress_bar(label, unit="step") as progress:
        results = execute_seeds(configs, tracking, stack=args.stack_seeds, max_stack=args.max_stack,
                                data_dir=args.data_dir, tags={TAG_KIND: "run"}, progress=progress,
                                save_model=args.save_model, say=lambda line: print(f"note: {line}", file=sys.stderr))
    for history, run_id in results:
        print(f"seed {history.config.seed}: ", end="", file=sys.stderr)
        print_run_summary(history, run_id, tracking)
    if args.json:
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


def cmd_list(args) -> int:
    if args.what == "problems":
        from optimstudy.problems.registry import PROBLEMS  # on first use: it imports torch

        for name, problem in PROBLEMS.items():
            target = f"{problem.target[0]} {problem.target[1]:g}" if problem.target else "-"
            print(f"{name:16} {problem.task:15} data={problem.dataset:13} loss={problem.default_loss:14} "
                  f"target={target:18} {problem.description}")
        print("\nany other: --problem package.module:problem (an optimstudy.problems.Problem)")
    elif args.what == "optimizers":
        from optimstudy.problems.optimizers import OPTIMIZERS  # on first use: it imports torch

        for name, spec in OPTIMIZERS.items():
            defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items()) or "torch defaults"
            low, high, _ = spec.space["lr"]
            print(f"{name:10} {spec.cls.__module__}.{spec.cls.__name__:9} {defaults:28} "
                  f"lr search {low:g}..{high:g} (log)  {spec.description}")
        print("\nany other: --optimizer package.module:Class, e.g. schedulefree:AdamWScheduleFree, prodigyopt:Prodigy "
              "(pip install -e '.[optimizers]'); a matrices-only one with --rest optimizer=adamw --rest lr=3e-4")
    elif args.what == "schedules":
        from optimstudy.problems import schedules  # on first use: it imports torch

        print("\n\n".join(schedules.__doc__.split("\n\n")[2:]).rstrip())
    else:
        from optimstudy.problems.losses import LOSSES  # on first use: it imports torch

        for name, (function, tasks) in LOSSES.items():
            print(f"{name:14} {', '.join(tasks):19} {(function.__doc__ or '').strip()}")
    return 0


def cmd_ui(args) -> int:
    return ui(args.tracking_uri, host=args.host, port=args.port, experiment=args.experiment)


def cmd_sweep(args) -> int:
    check_trial_timeout(args.trial_timeout)
    stall_timeout_s()  # a bad OPTIMSTUDY_STALL_TIMEOUT_S: exit 2 now
    if not args.dry_run:  # a server that is not there: say so in seconds, before the study's storage exists

        tracking_uri = resolve_tracking_uri(args.tracking_uri)
        probe_store(tracking_uri)
        # before the sweep imports torch (~2 s): the writer imports MLflow meanwhile, on the other core
        start_writer(tracking_uri, spares=max(0, args.workers - 1))
    from optimstudy.sweep.command import sweep  # on first use: it imports optuna, torch

    return sweep(args.spec, workers=args.workers, storage=args.storage, tracking_uri=args.tracking_uri,
                 data_dir=args.data_dir, dry_run=args.dry_run, as_json=args.json, restart=args.restart,
                 until_decided=args.until_decided, trial_timeout_s=args.trial_timeout,
                 restart_argv=args.restart_argv)


def cmd_dashboard(args) -> int:
    return dashboard(args.spec, storage=args.storage, host=args.host, port=args.port)


def cmd_report(args) -> int:
    from optimstudy.report.build import report_command  # on first use: it imports pandas, scipy

    return report_command(args.tracking_uri, args.experiments, args.out, args.analysis, args.debug,
                          log_to_store=not args.no_log_to_store)


def analysis_script_main(figure, argv=None) -> int:
    """`python PATH/NAME.py [--tracking-uri URI] [--experiment NAME] [--out DIR]` (a built-in one:
    `python -m optimstudy.report.figures.NAME …`): one figure alone.
    Each analysis script ends with `raise SystemExit(analysis_script_main(figure))`."""
    argv = sys.argv[1:] if argv is None else argv

    name = Path(inspect.getsourcefile(figure)).stem
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=f"Draw the '{name}' figure.")
    parser.add_argument("--experiment", action="append", dest="experiments", metavar="NAME",
                        help="experiments to draw from, repeatable (default: all)")
    parser.add_argument("--out", default="analysis/figures", help="output folder (default: analysis/figures)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    add_tracking_flags(parser, allow_no_track=False)
    args = parser.parse_args(argv)
    try:
        from optimstudy.report.build import draw_alone  # on first use: it imports pandas, scipy

        return draw_alone(figure, name, args.tracking_uri, args.experiments, args.out)
    except UsageError as error:
        if args.debug:
            raise
        print(hide_passwords(f"{parser.prog}: error: {error}"), file=sys.stderr)
        return EXIT_USAGE


def cmd_check(args) -> int:
    return check(args.spec, experiment=args.experiment, storage=args.storage, tracking_uri=args.tracking_uri,
                 dry_run=args.dry_run)


COMMANDS = {"run": cmd_run, "list": cmd_list, "ui": cmd_ui, "sweep": cmd_sweep, "dashboard": cmd_dashboard,
            "report": cmd_report, "check": cmd_check}

if __name__ == "__main__":
    sys.exit(main())
