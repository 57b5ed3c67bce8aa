"""The command line: argparse lives here only; everything inward takes plain values. Each command's
module is imported when that command runs, so `optimstudy --help` and every command start without
the others' imports (run/command.py, sweep/command.py, report/build.py, sweep/check.py, ...).

    optimstudy run --problem mnist_mlp --optimizer adam --lr 1e-3 --epochs 3
    optimstudy sweep experiments/quickstart.toml --workers 2
    optimstudy report
    optimstudy ui
"""
import argparse
import inspect
import os
import sys
import threading
from pathlib import Path

from optimstudy import __version__
from optimstudy.compat.python import run_exit_handlers
from optimstudy.errors import TrialTimeout, UsageError
from optimstudy.processes import check_trial_timeout, quick_exit, stall_timeout_s
from optimstudy.sweep.options import SweepOptions
from optimstudy.tracking.client import resolve_tracking_uri
from optimstudy.tracking.connectivity import hide_passwords, probe_store
from optimstudy.tracking.writer_handle import start_writer

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
    module-by-module teardown: with torch, MLflow and pandas loaded it is slow (docs/performance.md),
    and it comes at the end of every command. With a non-daemon thread still alive, a normal exit,
    which waits for it."""
    if any(not thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread()):
        raise SystemExit(code)
    if "torch._dynamo.utils" in sys.modules:
        from optimstudy.compat.torch import drop_unheard_compile_report  # here: it imports torch

        drop_unheard_compile_report()
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
    from optimstudy.run.command import RunOptions, run  # on first use: light; it imports torch once the writer runs

    fields = dict(problem=args.problem, optimizer=args.optimizer, lr=args.lr, opt=args.opt, rest=args.rest,
                  epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, seed=args.seed, device=args.device,
                  threads=args.threads, loss=args.loss, zero_grad=not args.no_zero_grad, accumulate=args.accumulate,
                  eval_every=args.eval_every, clip_grad_norm=args.clip_grad_norm,
                  update_norm_every=args.update_norm_every, schedule=args.schedule, schedule_args=args.schedule_arg,
                  schedule_every=args.schedule_every, shuffle=not args.no_shuffle, val_fraction=args.val_fraction,
                  split_seed=args.split_seed, vary=args.vary, compile=args.compile)
    return run(fields, RunOptions(seeds=args.seeds, stack_seeds=args.stack_seeds, max_stack=args.max_stack,
                                  data_dir=args.data_dir, save_model=args.save_model, as_json=args.json,
                                  trial_timeout_s=args.trial_timeout, track=not args.no_track,
                                  tracking_uri=args.tracking_uri, experiment=args.experiment))


def cmd_list(args) -> int:
    from optimstudy.problems.listing import list_command  # on first use: it imports torch

    return list_command(args.what)


def cmd_ui(args) -> int:
    from optimstudy.sweep.servers import ui  # on first use: no other command needs it

    return ui(args.tracking_uri, host=args.host, port=args.port, experiment=args.experiment)


def cmd_sweep(args) -> int:
    check_trial_timeout(args.trial_timeout)
    stall_timeout_s()  # a bad OPTIMSTUDY_STALL_TIMEOUT_S: exit 2 now
    options = SweepOptions(workers=args.workers, storage=args.storage,
                           tracking_uri=resolve_tracking_uri(args.tracking_uri), data_dir=args.data_dir,
                           dry_run=args.dry_run, as_json=args.json, restart=args.restart,
                           until_decided=args.until_decided, trial_timeout_s=args.trial_timeout,
                           restart_argv=tuple(args.restart_argv) if args.restart_argv else None)
    if not options.dry_run:  # a server that is not there: say so in seconds, before the study's storage exists
        probe_store(options.tracking_uri)
        # before the sweep imports torch, which takes seconds: the writer imports MLflow meanwhile, on the other core
        start_writer(options.tracking_uri, spares=max(0, options.workers - 1))
    from optimstudy.sweep.command import sweep  # on first use: it imports optuna, torch

    return sweep(args.spec, options)


def cmd_dashboard(args) -> int:
    from optimstudy.sweep.servers import dashboard  # on first use: no other command needs it

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
    from optimstudy.sweep.check import check  # on first use: it imports optuna, torch, pandas

    return check(args.spec, experiment=args.experiment, storage=args.storage, tracking_uri=args.tracking_uri,
                 dry_run=args.dry_run)


COMMANDS = {"run": cmd_run, "list": cmd_list, "ui": cmd_ui, "sweep": cmd_sweep, "dashboard": cmd_dashboard,
            "report": cmd_report, "check": cmd_check}

if __name__ == "__main__":
    sys.exit(main())
