"""`optimstudy sweep SPEC`: an experiment spec run as one Optuna study and one MLflow parent run.

    from optimstudy.sweep.command import sweep
    from optimstudy.sweep.options import SweepOptions
    sweep("experiments/quickstart.toml", SweepOptions(workers=2))  # what `optimstudy sweep … --workers 2` runs

Orchestration only: validate everything before any store is written; plan (planning.py); under
the study's planning lock, check the spec against the study's identity, queue what is missing
and open the parent run (storages.py, queue.py, tracking/parent_runs.py); run the queue with worker
processes (trials.py, workers.py); confirm each optimizer's best configuration on new seeds; print
the table of the results' best configurations and verdicts (output.py). Running the same command
again resumes.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from optimstudy import results
from optimstudy.errors import TrialTimeout, UsageError
from optimstudy.processes import EXIT_TIMED_OUT, Watchdog, interrupted_by_signals, stall_timeout_s
from optimstudy.progress import progress_bar
from optimstudy.results.objectives import selection_warning
from optimstudy.run.config import default_threads
from optimstudy.run.devices import available_devices, cpu_count
from optimstudy.sweep.options import WORKER_OPTIONS, SweepOptions, WorkerOptions
from optimstudy.sweep.output import LISTED_TRIALS, format_table, json_number, print_dry_run, trial_numbers_text
from optimstudy.sweep.planning import (
    check_plan_size,
    compare_identity,
    confirm_plan,
    decide_plan,
    iter_plan,
    plan,
    plan_counts,
    plan_devices,
    skip_notes,
    spec_identity,
)
from optimstudy.sweep.queue import ERROR, EXTENSIONS, PHASE, ROUND, enqueue_missing
from optimstudy.sweep.spec import Decide, Spec
from optimstudy.sweep.spec_reader import load_spec
from optimstudy.sweep.storages import (
    check_storage,
    open_storage,
    open_study,
    planning_lock,
    restart_study,
    study_exists,
)
from optimstudy.sweep.trials import (
    IDENTITY,
    PARENT_RUN,
    RUN_ID,
    recover_dead_trials,
    timed_out_keys,
    trial_config,
    trial_counts,
    unresolved_failures,
    work,
)
from optimstudy.sweep.workers import ForkedWorker, fork_workers
from optimstudy.tag_names import (
    NOTE_TAG,
    TAG_DECIDE,
    TAG_EDGE_WARNINGS,
    TAG_EXTENSIONS,
    TAG_KIND,
    TAG_PID,
    TAG_SPEC,
    TAG_STUDY,
)
from optimstudy.tracking.client import ensure_store, experiment_id, resolve_tracking_uri
from optimstudy.tracking.connectivity import hide_passwords
from optimstudy.tracking.parent_runs import create_parent_run, rename_experiment, set_notes, update_run
from optimstudy.tracking.writer_handle import StoreError, start_writer, stop_writers


def sweep(spec_path, options: SweepOptions | None = None) -> int:
    """Run (or resume) the sweep; returns the exit code: 0 done, 1 some configurations failed."""
    options = options or SweepOptions()
    options = replace(options, tracking_uri=resolve_tracking_uri(options.tracking_uri))  # as given, else the default
    if not options.dry_run:  # the writer starts (SQLAlchemy, or MLflow where it must) on the other core while we
        # read the spec and the data; it creates the store only when prepare() tells it to, so bad input leaves none.
        # Started already by the command line (then this finds it): for callers from Python.
        workers = options.workers
        start_writer(options.tracking_uri, spares=max(0, workers - 1) if isinstance(workers, int) else 0)
    try:
        return _sweep(spec_path, options)
    finally:
        stop_writers(wait=False)  # a sweep stops its writers itself; this is for bad input, found before


def _sweep(spec_path, options: SweepOptions) -> int:
    spec = load_spec(spec_path)
    if options.until_decided and spec.decide is None:
        spec = replace(spec, decide=Decide())
    if selection_warning(spec.metric):  # before any compute is spent on it
        print(f"warning: {selection_warning(spec.metric)}", file=sys.stderr)
    workers = options.workers
    if not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers}")
    counts = plan_counts(spec)  # counted, not built: a huge grid is refused (or summarised) in microseconds
    if options.dry_run and sum(counts.values()) > LISTED_TRIALS:
        devices, absent = plan_devices(spec)
        skipped = {device: sum(counts.values()) // len(devices) for device in absent} if devices else {}
        print_dry_run(spec, iter_plan(spec, devices), skipped, counts)
        return 0
    if not options.dry_run:
        check_plan_size(spec, sum(counts.values()))
    planned, skipped = plan(spec)
    options = options.with_storage(spec.name)  # a URI typed with a raw password is refused even by a dry run
    if options.dry_run:
        print_dry_run(spec, planned, skipped)
        return 0
    if not planned:
        raise UsageError(f"{spec.path}: no trial can run on this machine: devices {', '.join(skipped)} are absent "
                         f"(available: {', '.join(available_devices())})")
    check_storage(options.storage, options.tracking_uri)  # before any store exists
    # now: one thread, no torch work, no connection yet
    pool = fork_workers(min(workers, len(planned)) - 1, options.tracking_uri)
    try:
        # after the fork above: the forked workers start without torch's threads
        from optimstudy.run.runner import check_model, load_data

        # missing data, or a model that cannot take it: fail before writing (the data read once a process)
        first = {}  # the first configuration of each (problem, loss): the model and its loss checked once
        for item in planned:
            first.setdefault((item.config.problem, item.config.loss), item.config)
        # a problem whose data or model never returns must not hang the sweep here either
        with Watchdog(options.trial_timeout_s or spec.trial_timeout_s, stall_timeout_s(),
                      what="the up-front check of the problem's data and model"):
            try:
                for config in first.values():
                    config = config.resolved()
                    check_model(config, load_data(config, options.data_dir))
            except TrialTimeout as error:
                raise UsageError(f"{spec.path}: problem '{config.problem}': {error}; its data or model "
                                 "does not return") from None
        with interrupted_by_signals():
            return _run(spec, planned, skipped, options, pool)
    finally:
        for worker in pool:  # the ones no phase needed exit now
            worker.dismiss()
        for worker in pool:
            worker.wait()


def _run(spec: Spec, planned, skipped, options: SweepOptions, pool) -> int:
    from optimstudy.results.notes import markdown_text, study_note  # on first use: it imports pandas

    url, tracking_uri = options.storage, options.tracking_uri
    study, storage, parent_run_id, added, notes = prepare(spec, planned, url, tracking_uri, options.restart)
    started = time.perf_counter()  # "N trials run now in X s": the trials, after the stores are set up
    for line in skip_notes(skipped) + notes:
        print(f"note: {line}", file=sys.stderr)
    before = trial_counts(study)
    finished_before = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    if before["waiting"] == 0 and before["running"] == 0 and not spec.confirm_seeds and not spec.decide:
        print(f"sweep '{spec.name}': all {len(planned)} trials already done; nothing to run", file=sys.stderr)
    crew = Crew(spec, study, options.for_workers(spec, parent_run_id), options.workers, pool, options.restart_argv)
    deaths, status = [], "FAILED"
    refused = None  # the StoreError that stopped the sweep
    try:
        deaths += run_phase(crew, spec.name, planned)
        confirm = confirm_plan(spec, best_to_confirm(spec, study, tracking_uri))
        if confirm:
            with planning_lock(url, spec.name):
                queued = enqueue_missing(study, confirm, (spec.metric, spec.direction))
            if queued or trial_counts(study)["waiting"]:
                deaths += run_phase(crew, f"{spec.name} confirm", confirm)
        if spec.decide:
            deaths += decide_rounds(crew)
        status = "FINISHED"
    except StoreError as error:  # every further trial would fail the same way: stop, and say so
        refused = error
    except KeyboardInterrupt:
        status = "KILLED"
        update_run(tracking_uri, parent_run_id, tags={ERROR: "interrupted; run the same command to resume"})
        raise
    finally:
        final = trial_counts(study)
        failures = unresolved_failures(study)
        if status == "FINISHED" and (failures or final["waiting"]):
            status = "FAILED"
        if final["running"] == 0 or status == "KILLED":  # another command's workers may still be running
            with contextlib.suppress(Exception) if refused else contextlib.nullcontext():  # the store may refuse it too
                update_run(tracking_uri, parent_run_id, status=status)
        stop_writers()
    if refused is not None:
        print(f"sweep '{spec.name}': stopped: {refused}\n{final['waiting'] + sum(map(len, failures.values()))} "
              "configuration(s) not done; they stay queued: once the store can be written again, run the same "
              "command to resume", file=sys.stderr)
        return 1
    from optimstudy.results.tables import edge_warnings  # on first use: it imports pandas

    outcome = study_results(spec, tracking_uri)
    warnings = edge_warnings(outcome.best.sort_values(["problem", "optimizer"], kind="stable"))
    update_run(tracking_uri, parent_run_id, tags={TAG_EDGE_WARNINGS: json.dumps(warnings)},
               metrics={f"trials_{name}": value for name, value in final.items()})
    set_notes(tracking_uri, parent_run_id, study_note(outcome, spec.name, spec.description), spec.name,
              spec.description or f"optimstudy sweep of {markdown_text(spec.path)}")
    # finished by this command's processes since it started: by pid alone, an earlier sweep run in this
    # same process (from Python: a notebook, a test) would count too
    new = sum(t.user_attrs.get("pid") in crew.pids and t.number not in finished_before
              for t in study.get_trials(deepcopy=False) if t.state.is_finished())
    summary = outcome.summary.sort_values(["problem", "optimizer"], kind="stable").to_dict("records")
    verdicts = outcome.verdicts.to_dict("records")
    print(format_table(summary, verdicts, spec, outcome.answers.to_dict("records")))
    for warning in [*warnings, selection_warning(spec.metric)]:
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    for line in deaths:
        print(f"warning: {line}", file=sys.stderr)
    for reason, trial_numbers in failures.items():
        print(f"failed: {len(trial_numbers)} trial(s) ({trial_numbers_text(trial_numbers)}): {reason}", file=sys.stderr)
    rerun = final["failed"] - sum(map(len, failures.values()))  # failed, and their configuration queued again
    print(f"sweep '{spec.name}': {new} trials run now in {time.perf_counter() - started:.1f} s; study totals: "
          f"{final['complete']} complete, {final['pruned']} pruned, {final['failed']} failed"
          f"{f' ({rerun} of them queued again)' if rerun > 0 else ''}; "
          f"parent run {parent_run_id}; see `optimstudy ui` and `optimstudy report`", file=sys.stderr)
    unfinished = sum(len(n) for n in failures.values()) + final["waiting"]
    if unfinished:
        print(f"sweep '{spec.name}': {unfinished} configuration(s) not done; fix the cause above if it is "
              "yours, then run the same command again to resume (failed trials are queued again)", file=sys.stderr)
    if options.as_json:
        print(json.dumps({"study": spec.name, "storage": hide_passwords(url),
                          "tracking_uri": hide_passwords(tracking_uri), "parent_run_id": parent_run_id,
                          "new_trials": new, "added": added,
                          "trials": {"complete": final["complete"], "pruned": final["pruned"],
                                     "failed": final["failed"], "skipped": sum(skipped.values())},
                          "failures": {reason: len(numbers) for reason, numbers in failures.items()},
                          "best": [{"problem": r["problem"], "optimizer": r["optimizer"],
                                    "lr": json_number(r["best_lr"]), "mean": json_number(r["mean"]),
                                    "std": json_number(r["std"]),
                                    "median": json_number(r["median"]), "ci_low": json_number(r["ci_low"]),
                                    "ci_high": json_number(r["ci_high"]), "seeds": int(r["seeds"])} for r in summary],
                          "verdicts": [{key: (json_number(v[key]) if isinstance(v[key], float) else v[key])
                                        for key in ("problem", "a", "b", "metric", "verdict", "decided", "outcome",
                                                    "seeds", "test", "difference", "ci_low", "ci_high", "p_value",
                                                    "p_holm", "pairs", "seeds_needed", "vary", "evidence")}
                                       for v in verdicts],
                          "answers": [{key: a[key] for key in ("problem", "metric", "ranking", "basis", "seeds",
                                                               "pairs", "undecided", "added_seeds")}
                                      for a in outcome.answers.to_dict("records")],
                          "edge_warnings": warnings}))
    return 1 if unfinished else 0


def prepare(spec: Spec, planned, url: str, tracking_uri: str, restart: bool):
    """Under the study's planning lock (one command at a time, however many start at once): check
    the spec against the study, create both stores, queue what is missing, open the parent run."""
    notes = []
    with planning_lock(url, spec.name):
        storage = open_storage(url)
        identity, added = spec_identity(spec), []
        if study_exists(storage, spec.name):
            old = open_study(spec, storage).user_attrs.get(IDENTITY)
            if old is not None and old != identity and not restart:
                added, differing = compare_identity(old, identity)
                if differing:
                    raise UsageError(
                        f"{spec.path}: the study '{spec.name}' already exists with a different spec: "
                        f"{', '.join(differing)} differ. A name is a study's identity: give this spec a new "
                        f"name, or pass --restart to keep the old study as '{spec.name}.replaced-…' and start "
                        f"afresh (only new learning rates, seeds or optimizers extend a study)")
        ensure_store(tracking_uri, start_writer(tracking_uri))  # once, before any worker starts
        experiment_id(tracking_uri, spec.name)  # a deleted experiment is a usage error, before the study is written
        if restart and study_exists(storage, spec.name):
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            kept = restart_study(storage, spec.name, stamp)
            moved = rename_experiment(tracking_uri, spec.name, kept)
            notes.append(f"--restart: the old study is kept as '{kept}'"
                         + (f" and its MLflow experiment renamed '{kept}'" if moved else ""))
        study = open_study(spec, storage, create=True)
        study.set_user_attr(IDENTITY, identity)
        parent_run_id = ensure_parent_run(spec, study, tracking_uri, added)
        notes += [f"recovered: {line}" for line in recover_dead_trials(study, storage, tracking_uri)]
        # started again by restart_sweep: the trial that was stuck stays FAILED (it would only hang again)
        skip = timed_out_keys(study) if os.environ.get(RESTARTED_AFTER_STUCK) else frozenset()
        queued = enqueue_missing(study, planned, (spec.metric, spec.direction), skip=skip)
    if added:
        notes.append(f"the spec extends the study: added {'; '.join(added)} ({len(queued)} new trials queued)")
    return study, storage, parent_run_id, added, notes


def ensure_parent_run(spec: Spec, study, tracking_uri: str, added: list[str]) -> str:
    """The study's one MLflow parent run: created once (under the planning lock), reopened after."""
    run_id = study.user_attrs.get(PARENT_RUN)
    live = {TAG_PID: os.getpid(), "host": socket.gethostname()}
    if added:  # the spec grew: the parent run records the new spec and what it added
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        history = json.loads(study.user_attrs.get(EXTENSIONS, "[]"))
        history.append({"at": stamp, "added": added})
        study.set_user_attr(EXTENSIONS, json.dumps(history))
        live.update({TAG_EXTENSIONS: json.dumps(history), TAG_SPEC: spec.path})
    texts = {"spec.toml": spec.text} if spec.text and (added or not run_id) else {}
    if run_id and update_run(tracking_uri, run_id, tags=live, texts=texts, status="RUNNING"):
        return run_id
    tags = {TAG_KIND: "sweep", TAG_STUDY: spec.name, TAG_SPEC: spec.path,
            NOTE_TAG: spec.description, **live}
    params = {"spec": spec.path, "mode": "search" if spec.search else "grid", "problems": ",".join(spec.problems),
              "optimizers": ",".join(o.label for o in spec.optimizers), "seeds": ",".join(map(str, spec.seeds)),
              "devices": ",".join(spec.devices), "objective_metric": spec.metric, "objective_direction": spec.direction,
              "confirm_seeds": spec.confirm_seeds, **spec.budget}
    if spec.search:
        params.update(sampler=spec.search.sampler, trials_per_optimizer=spec.search.trials, pruner=spec.search.pruner)
    run_id = create_parent_run(tracking_uri, spec.name, f"sweep {spec.name}", tags, params,
                               {"spec.toml": spec.text} if spec.text else {})
    study.set_user_attr(PARENT_RUN, run_id)
    return run_id


@dataclass
class Crew:
    """What every phase of one sweep command runs with: the study, each worker's options, how many
    workers, the forked ones still to hand out (workers.py) and every worker process started (pids)."""
    spec: Spec
    study: object
    worker_options: WorkerOptions
    workers: int
    pool: list
    restart_argv: tuple | None = None  # SweepOptions.restart_argv
    pids: set = field(default_factory=lambda: {os.getpid()})


def run_phase(crew: Crew, label: str, planned) -> list[str]:
    """Run the queue to empty with up to `crew.workers` workers (their pids added to `crew.pids`);
    returns a line per worker that died.

    This process is one of the workers (it has imported torch and loaded the data already); the
    others come from `crew.pool` (forked at start-up, see workers.py) while it lasts, else they are
    fresh processes, started first so that their start-up overlaps our work.
    """
    spec, study, worker_options, pool = crew.spec, crew.study, crew.worker_options, crew.pool
    restart_argv = crew.restart_argv
    total = trial_counts(study)
    todo = total["waiting"]
    if todo == 0:
        return []
    workers = min(crew.workers, todo)  # more would only start, find the queue empty and exit
    threads = worker_options.threads or default_threads(workers)
    print(f"{label}: {todo} trials to run with {workers} worker{'s' if workers > 1 else ''} "
          f"({threads} torch thread{'s' if threads > 1 else ''} each)", file=sys.stderr, flush=True)
    cores = cpu_count()
    if workers > cores:
        print(f"warning: {workers} workers on {cores} cores: they will compete for the cores and each "
              f"holds its own copy of the data; --workers {cores} is usually faster", file=sys.stderr)
    done_before = total["complete"] + total["pruned"] + total["failed"]
    alive_read, alive_write = os.pipe()  # closes when we die, however we die: the workers then stop

    # the experiment looked up here: a forked worker needs no MLflow client
    options = replace(worker_options, threads=threads,
                      experiment_id=experiment_id(worker_options.tracking_uri, spec.name))
    others = []
    for _ in range(workers - 1):
        if pool:
            others.append(pool.pop(0))
            others[-1].start(options)
        else:
            # the options hold the store URIs (passwords too): in the environment, not on a command line
            fresh = replace(options, alive_fd=alive_read).to_json()
            others.append(subprocess.Popen([sys.executable, "-m", "optimstudy.sweep.trials"], pass_fds=[alive_read],
                                           start_new_session=True, env={**os.environ, WORKER_OPTIONS: fresh}))
    os.close(alive_read)
    crew.pids.update(p.pid for p in others)
    try:
        with progress_bar(label, unit="trial") as progress:
            def report(*_):
                if progress is not None:
                    now = trial_counts(study)
                    progress(now["complete"] + now["pruned"] + now["failed"] - done_before, todo)

            refused = None
            try:
                work(spec, options, on_trial_done=report, planned=planned,
                     last_resort=(lambda reason: restart_sweep(restart_argv)) if restart_argv else None)
            except StoreError as error:  # the store refuses writes: the others stop at their next batch too
                refused = error
            while any(p.poll() is None for p in others):
                report()
                time.sleep(0.5)
            if refused is not None:
                raise refused
            if any(p.returncode not in (0, 130) for p in others):  # a dead worker's trial: run it again here
                work(spec, options, on_trial_done=report, planned=planned)
            report()
    except KeyboardInterrupt:
        for process in others:  # their own sessions: the terminal's Ctrl-C reached only us
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in others:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finally:
        os.close(alive_write)
        for process in others:
            if isinstance(process, ForkedWorker):
                process.dismiss()
    return [f"worker {p.pid} " + (f"was killed by signal {-p.returncode}; its trial was failed and queued again"
                                  if p.returncode < 0 else
                                  "ended itself: its trial timed out stuck where it could not be interrupted; the "
                                  "trial is FAILED (not queued again in this sweep)" if p.returncode == EXIT_TIMED_OUT
                                  else f"exited with code {p.returncode}; its trial was failed and queued again")
            for p in others if p.returncode not in (0, 130)]


RESTARTED_AFTER_STUCK = "OPTIMSTUDY_RESTARTED_AFTER_STUCK"


def restart_sweep(argv) -> None:
    """From the watchdog's thread, once a trial of this process is stuck where nothing reaches it
    and is FAILED in both stores: the same sweep command again, in this process (same pid, same
    terminal; os.execve), so that the sweep goes on with the next trials. Its workers die with the
    old program (processes.die_with_parent) and their trials run again; the stuck one is not queued
    again (RESTARTED_AFTER_STUCK)."""
    print("optimstudy: the sweep starts again in this process, to go on with the other trials",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(argv[0], list(argv), {**os.environ, RESTARTED_AFTER_STUCK: "1"})


# ---- the results (results/ computes them; the sweep prints them) ------------------------

def study_results(spec: Spec, tracking_uri: str):
    """results.Study of this study's runs, read as the report reads them (one answer)."""
    from optimstudy.tracking.reader import load_runs  # on first use: it imports pandas

    frame = load_runs(tracking_uri, experiments=[spec.name], metrics=[*results.RUN_METRICS, *results.RESULT_METRICS])
    return results.Study(frame[frame["study"] == spec.name] if not frame.empty else frame)


def best_to_confirm(spec: Spec, study, tracking_uri: str) -> list[tuple]:
    """(label, RunConfig) of each best configuration of the comparison."""
    if not spec.confirm_seeds:
        return []
    return [(label, config) for label, config, _ in best_trial_configs(study, study_results(spec, tracking_uri).best)]


def best_trial_configs(study, best) -> list[tuple]:
    """(label, RunConfig, best row) of each best configuration of the comparison (grid or search; not
    every lr diverged): the trial that ran its first run holds the config."""
    by_run = {t.user_attrs.get(RUN_ID): t for t in study.get_trials(deepcopy=False)}
    picks = []
    for row in best.to_dict("records"):
        trial = next((by_run[r] for r in row["run_ids"] if r in by_run), None)
        if trial is not None and trial.user_attrs.get(PHASE) in ("grid", "search") \
                and not row.get("all_diverged"):
            picks.append((trial.user_attrs.get("optimizer"), trial_config(trial), row))
    return picks


def decide_rounds(crew: Crew) -> list[str]:
    """Rounds of new seeds for the labels of every pair still open (results/rounds.py) until none is
    open, the time budget is spent or a round adds no seed; returns a line per worker that died. The
    parent run's tag declares the sequential design, so every verdict of the study is tested for it."""
    from optimstudy.results.rounds import seeds_wanted  # on first use: it imports pandas
    from optimstudy.results.sequential import DESIGN_METRIC  # on first use: it imports scipy

    spec, study, worker_options = crew.spec, crew.study, crew.worker_options
    decide, tracking_uri = spec.decide, worker_options.tracking_uri
    update_run(tracking_uri, worker_options.parent_run_id, tags={TAG_DECIDE: decide.as_tag()},
               metrics={DESIGN_METRIC: decide.max_seeds})
    deaths, started, seen = [], time.monotonic(), set()
    while True:
        best = study_results(spec, tracking_uri)
        wanted = seeds_wanted(best.best, best.verdicts, decide.seeds_per_round, decide.max_seeds)
        asked = {(w["problem"], w["setting_key"], w["label"], tuple(w["seeds"])) for w in wanted}
        if not wanted or asked <= seen:  # decided, out of reach or at max_seeds; or the last round added nothing
            return deaths
        spent = time.monotonic() - started
        if decide.time_budget_s is not None and spent >= decide.time_budget_s:
            print(f"{spec.name} decide: the time budget of {decide.time_budget_s:g} s is spent ({spent:.0f} s); "
                  f"{len(wanted)} label(s) of open pairs get no more seeds", file=sys.stderr)
            return deaths
        seen |= asked
        where = {(w["problem"], w["setting_key"], w["label"]): w["seeds"] for w in wanted}
        picks = [(label, config, where[(row["problem"], row["setting_key"], label)])
                 for label, config, row in best_trial_configs(study, best.best)
                 if (row["problem"], row["setting_key"], label) in where]
        number = 1 + max((t.user_attrs.get(ROUND, 0) for t in study.get_trials(deepcopy=False)), default=0)
        planned = decide_plan(picks, number)
        with planning_lock(worker_options.storage, spec.name):
            enqueue_missing(study, planned, (spec.metric, spec.direction))
        labels = ", ".join(sorted({f"{label} ({w['problem']})" for w in wanted for label in [w["label"]]}))
        print(f"{spec.name} decide round {number}: {len(planned)} new seeds for the open pairs of {labels}",
              file=sys.stderr, flush=True)
        deaths += run_phase(crew, f"{spec.name} decide round {number}", planned)
