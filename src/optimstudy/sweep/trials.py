"""A sweep's trials: the worker loop, running one trial, recovery from dead workers and writers.

    study = open_study(spec, open_storage(url))                # storages.py
    with planning_lock(url, spec.name):                       # one planner, however many commands
        enqueue_missing(study, planned)                       # queue.py
    work(spec, WorkerOptions(spec.path, url, tracking_uri))  # take queued trials until none

Every configuration is queued (enqueued) once, by whichever command holds the study's planning
lock; workers take trials from the queue atomically (WAITING -> RUNNING is a compare-and-set in
every Optuna storage), so no configuration runs twice, even with workers on several machines.
Trials of a dead worker are found (its pid is gone, or its heartbeat is stale), failed, and
queued again.
"""
import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace

import optuna
from optuna.trial import TrialState

from optimstudy.errors import Stop, TrialTimeout
from optimstudy.processes import (
    STOP_SIGNALS,
    Watchdog,
    die_with_parent,
    raise_interrupt,
    stall_timeout_s,
    stops_deferred,
)
from optimstudy.results.objectives import evaluation_metric
from optimstudy.run.runner import Tracking, execute, execute_stack
from optimstudy.run.stacked import max_stack, prepare_stack
from optimstudy.sweep.options import WORKER_OPTIONS, WorkerOptions
from optimstudy.sweep.planning import config_from_json, plan
from optimstudy.sweep.queue import (
    CONFIG,
    ERROR,
    LIVE,
    PHASE,
    ROUND,
    SPACE,
    Queue,
    enqueue_missing,
    fail_if_running,
    fail_trial,
    requeue,
    trial_key,
)
from optimstudy.sweep.spec import Spec
from optimstudy.sweep.spec_reader import load_spec
from optimstudy.sweep.storages import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    UNMARKED_GRACE_S,
    open_storage,
    open_study,
    planning_lock,
)
from optimstudy.tag_names import (
    TAG_KIND,
    TAG_LR_SPACE,
    TAG_OBJECTIVE_DIRECTION,
    TAG_OBJECTIVE_METRIC,
    TAG_OPTIMIZER_LABEL,
    TAG_PHASE,
    TAG_ROUND,
    TAG_STUDY,
    TAG_TRIAL,
)
from optimstudy.tracking.client import artifact_location, end_orphaned_runs
from optimstudy.tracking.writer_handle import StoreError, WriterDied, start_writer

RUN_ID, DIVERGED = "mlflow_run_id", "diverged"
# A trial whose MLflow writer died (or stalled) under it runs again in the same sweep, with a fresh
# writer; this many times at most, so that a writer that dies on every trial does not loop forever.
WRITER_RERUNS = 2
WRITER_DIED = "the MLflow writer died mid-trial"  # how such a failure's reason starts
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM); queued again on resume"
IDENTITY, PARENT_RUN = "optimstudy.spec_identity", "mlflow_parent_run_id"  # study user attrs


# ---- what the study's trials say (the queue: queue.py) ------------------------------

def trial_config(trial):
    """The RunConfig a (frozen) trial ran: its queued config with its sampled arguments."""
    config = config_from_json(trial.user_attrs[CONFIG])
    if trial.user_attrs.get(SPACE):
        config = with_sampled(config, {name.split(".", 1)[1]: value for name, value in trial.params.items()})
    return config


def with_sampled(config, sampled: dict):
    """`config` with a searched trial's sampled values: the learning rate and optimizer arguments."""
    arguments = {name: value for name, value in sampled.items() if name != "lr"}
    return replace(config, lr=sampled.get("lr", config.lr), opt={**config.opt, **arguments})


def trial_counts(study) -> dict:
    result = {"complete": 0, "pruned": 0, "failed": 0, "waiting": 0, "running": 0, "duplicates": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.WAITING: "waiting", TrialState.RUNNING: "running"}
    for trial in study.get_trials(deepcopy=False):
        duplicate = trial.state == TrialState.FAIL and str(trial.user_attrs.get(ERROR, "")).startswith("duplicate")
        result["duplicates" if duplicate else names[trial.state]] += 1
    return result


def unresolved_failures(study) -> dict[str, list[int]]:
    """Failure reason -> trial numbers, for configurations whose latest attempt failed (a killed
    attempt that ran again since is resolved)."""
    trials = study.get_trials(deepcopy=False)
    settled = {trial_key(t.user_attrs) for t in trials if t.state in LIVE}
    reasons: dict[str, list[int]] = {}
    for trial in trials:
        if trial.state == TrialState.FAIL and trial_key(trial.user_attrs) not in settled:
            why = str(trial.user_attrs.get(ERROR, "no reason recorded"))
            if not why.startswith("duplicate"):
                reasons.setdefault(why, []).append(trial.number)
    return reasons


def timed_out_keys(study) -> set:
    """Keys of configurations whose latest attempt timed out: a sweep does not queue them again
    (a hang would repeat); a new command does, as it does every failed configuration."""
    trials = study.get_trials(deepcopy=False)
    settled = {trial_key(t.user_attrs) for t in trials if t.state in LIVE}
    return {trial_key(t.user_attrs) for t in trials if t.state == TrialState.FAIL
            and str(t.user_attrs.get(ERROR, "")).startswith(TrialTimeout.__name__)} - settled


# ---- recovering from dead workers ----------------------------------------------------------

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_is_dead(trial) -> bool:
    attrs = trial.user_attrs
    if attrs.get("host") == socket.gethostname() and "pid" in attrs:
        return not pid_alive(int(attrs["pid"]))
    beat = attrs.get("heartbeat") or (trial.datetime_start.timestamp() if trial.datetime_start else None)
    return beat is not None and time.time() - beat > STALE_AFTER_S


def unmarked_trials_are_dead(study, unmarked: list[int]) -> list:
    """Of the RUNNING trials numbered `unmarked`, which had no owner on record (no heartbeat), those
    still without one after UNMARKED_GRACE_S: their worker died between taking the trial and marking
    it (queue.mark_owner, the next writes), since a live one marks it within that time."""
    if not unmarked:
        return []
    time.sleep(UNMARKED_GRACE_S)
    return [trial for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if trial.number in unmarked and "heartbeat" not in trial.user_attrs]


def recover_dead_trials(study, storage, tracking_uri: str | None, wait_for_unmarked: bool = False) -> list[str]:
    """Fail RUNNING trials whose worker is gone and end their MLflow runs; returns what changed.

    A trial with no owner marked yet is failed only `wait_for_unmarked` (unmarked_trials_are_dead: up
    to UNMARKED_GRACE_S), which a worker asks for once its queue is empty: at a sweep's start, another
    machine's worker may be marking the trial it just took, and waiting there would stall the sweep."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB storages: Optuna's own heartbeats
    changed = []
    study_id = storage.get_study_id_from_name(study.study_name)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead = [trial for trial in running if trial_is_dead(trial)]
    found = {trial.number for trial in dead}
    if wait_for_unmarked:
        dead += unmarked_trials_are_dead(study, [trial.number for trial in running
                                                 if trial.number not in found and "heartbeat" not in trial.user_attrs])
    for trial in dead:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if not fail_if_running(storage, trial_id, "its worker died mid-trial"):
            continue  # another process recovered it first
        owner = trial.user_attrs.get("pid")
        changed.append(f"trial {trial.number}: worker {owner if owner is not None else '(unmarked)'} is gone; "
                       "marked FAIL")
    if tracking_uri:
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        run_ids = [t.user_attrs[RUN_ID] for t in failed if RUN_ID in t.user_attrs]
        for run_id in end_orphaned_runs(tracking_uri, run_ids, "its worker died mid-trial"):
            changed.append(f"run {run_id}: left RUNNING by a dead worker; ended as KILLED")
    return changed


# ---- one worker -----------------------------------------------------------------------------

class Heartbeat:
    """Records that a trial's worker is alive, every HEARTBEAT_S, until stopped."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id, self.stop_event = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop_event.wait(HEARTBEAT_S):
            self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            if isinstance(self.storage, optuna.storages.RDBStorage):
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        return False


def trial_hooks(spec: Spec, trial, config) -> tuple:
    """(on_eval, tags) of a trial's run: its pruning (searches only) and its MLflow tags."""
    attrs, label, phase = trial.user_attrs, trial.user_attrs.get("optimizer"), trial.user_attrs.get(PHASE, "")
    at_evaluation = evaluation_metric(spec.metric, config.val_fraction > 0)  # train_loss is train_full_loss there

    def on_eval(step, metrics):
        value = metrics.get(at_evaluation)
        # only searches prune: a grid, a [[runs]] entry or a confirmation runs to the end
        if phase == "search" and value is not None and math.isfinite(value) and step > 0:
            trial.report(value, step)
            if trial.should_prune():
                raise Stop(f"pruned at step {step} ({spec.metric} {value:.4g})")

    tags = {TAG_KIND: "trial", TAG_STUDY: spec.name, TAG_TRIAL: trial.number, TAG_PHASE: phase,
            TAG_OPTIMIZER_LABEL: label, TAG_OBJECTIVE_METRIC: spec.metric, TAG_OBJECTIVE_DIRECTION: spec.direction}
    if attrs.get(SPACE):
        tags[TAG_LR_SPACE] = json.dumps(list(attrs[SPACE]["lr"]))  # [low, high, log]
    if attrs.get(ROUND):
        tags[TAG_ROUND] = attrs[ROUND]
    return on_eval, tags


def start_trial(queue: Queue, study, trial, trial_id: int) -> bool:
    """Whether a claimed trial (its owner marked by Queue.take) is to run: False, and the trial
    FAILED, when its configuration already ran in another trial (queued twice)."""
    other = queue.duplicate_of(study, trial.number, trial_key(trial.user_attrs),
                               queue.storage.get_trial(trial_id).datetime_start)
    if other is not None:
        fail_trial(study, trial, f"duplicate of trial {other}; not run")
    return other is None


@dataclass(frozen=True)
class Worker:
    """What each trial of one worker runs with, set up once by `work`."""
    spec: Spec
    queue: Queue
    options: WorkerOptions
    tracking: Tracking | None  # None: untracked trials
    last_resort: object = None  # what ends a trial stuck where nothing reaches it (processes.Watchdog)


def run_stacked_trials(worker: Worker, claimed: list) -> list[str]:
    """Run claimed trials that differ only in seed (Queue.take_siblings) as one stack of seeds
    (run/stacked.py): each is still its own trial, told its own value, and its own MLflow run.
    Where they cannot be stacked, one line says why and each runs as run_trial runs it.
    Returns each trial's final state's name, in order."""
    from optimstudy.results.tables import objective_value  # on first use: it imports pandas

    spec, storage, options = worker.spec, worker.queue.storage, worker.options
    ready = []
    for study, trial, trial_id in claimed:
        if not start_trial(worker.queue, study, trial, trial_id):
            continue
        attrs = trial.user_attrs
        config = config_from_json(attrs[CONFIG])
        config = replace(config, threads=options.threads or config.threads)
        trial.suggest_float(f"{attrs.get('optimizer')}.lr", config.lr, config.lr, log=True)  # the queued value
        ready.append((study, trial, trial_id, config))
    states = {trial_id: "duplicate" for _, _, trial_id in claimed}
    if not ready:
        return list(states.values())

    def run_each(why):
        if why:
            print(f"optimstudy: trials {', '.join(str(t.number) for _, t, _, _ in ready)} run one after another, "
                  f"not stacked: {why}", file=sys.stderr, flush=True)
        for study, trial, trial_id, _ in ready:
            states[trial_id] = run_trial(worker, study, trial, trial_id)
        return list(states.values())

    if len(ready) < 2:
        return run_each(None)
    hooks = [trial_hooks(spec, trial, config) for _, trial, _, config in ready]

    def fail_stuck(reason):  # from the watchdog's thread, before it ends this process
        for study, trial, _, _ in ready:
            fail_trial(study, trial, f"{TrialTimeout.__name__}: {reason}")

    # one limit for the stack: its seeds step together (their MLflow runs, if the process must end, are
    # ended as KILLED by the writer)
    watchdog = Watchdog(options.trial_timeout_s, stall_timeout_s(), on_stuck=[fail_stuck],
                        last_resort=worker.last_resort,
                        what=f"trials {', '.join(str(t.number) for _, t, _, _ in ready)}")
    try:
        with contextlib.ExitStack() as beats:
            for _, _, trial_id, _ in ready:
                beats.enter_context(Heartbeat(storage, trial_id))
            beats.enter_context(watchdog)
            stack = prepare_stack([config for *_, config in ready], data_dir=options.data_dir)
            if not isinstance(stack, str):
                watchdog.begin()
                results = execute_stack(stack, worker.tracking, seed_tags=[tags for _, tags in hooks],
                                        on_evals=[on_eval for on_eval, _ in hooks],
                                        on_starts=[lambda run_id, t=trial: t.set_user_attr(RUN_ID, run_id)
                                                   for _, trial, _, _ in ready],
                                        progress=watchdog.progress())
    except KeyboardInterrupt:
        for study, trial, _, _ in ready:
            fail_trial(study, trial, INTERRUPTED)
        raise
    except WriterDied as died:
        for study, trial, trial_id, _ in ready:
            fail_trial(study, trial, f"{WRITER_DIED} ({died})")
            states[trial_id] = "writer died"
        return list(states.values())
    except StoreError as refused:
        for study, trial, trial_id, _ in ready:
            fail_trial(study, trial, f"StoreError: {refused}")
            states[trial_id] = "failed"
        if refused.store_wide:
            raise
        return list(states.values())
    except Exception as error:  # noqa: BLE001  as run_trial: FAIL them, with the message; the sweep goes on
        for study, trial, trial_id, _ in ready:
            fail_trial(study, trial, f"{type(error).__name__}: {error}")
            states[trial_id] = "failed"
        return list(states.values())
    if isinstance(stack, str):  # after its heartbeats stopped: each trial runs with its own
        return run_each(stack)
    for index, ((study, trial, trial_id, config), (history, _)) in enumerate(zip(ready, results)):
        stopped = stack.stopped.get(index)
        if stopped is not None:
            trial.set_user_attr("pruned", str(stopped))
            study.tell(trial, state=TrialState.PRUNED)
            states[trial_id] = "pruned"
            continue
        trial.set_user_attr(DIVERGED, history.diverged)
        trial.set_user_attr("lr", config.lr)
        study.tell(trial, objective_value(history.final.get(spec.metric), history.diverged, spec.direction))
        states[trial_id] = "complete"
    return list(states.values())


def run_trial(worker: Worker, study, trial, trial_id: int) -> str:
    """Run one claimed trial to a final state; returns that state's name.

    A trial past the options' `trial_timeout_s`, or with no step for the stall guard's time, is FAILED with
    "TrialTimeout: …" (processes.Watchdog); one stuck where it cannot be interrupted is FAILED by
    the watchdog's thread, which then ends this process (EXIT_TIMED_OUT). Either way, `work` does
    not queue it again in this sweep (timed_out_keys): a hang would only repeat."""
    from optimstudy.results.tables import objective_value  # on first use: it imports pandas

    spec, storage, options = worker.spec, worker.queue.storage, worker.options
    if not start_trial(worker.queue, study, trial, trial_id):
        return "duplicate"
    attrs = trial.user_attrs
    config, label = config_from_json(attrs[CONFIG]), attrs.get("optimizer")
    if attrs.get(SPACE):
        config = with_sampled(config, {arg: trial.suggest_float(f"{label}.{arg}", low, high, log=log)
                                       for arg, (low, high, log) in attrs[SPACE].items()})
    else:
        trial.suggest_float(f"{label}.lr", config.lr, config.lr, log=True)  # the queued value, as the trial's param
    config = replace(config, threads=options.threads or config.threads)

    on_eval, tags = trial_hooks(spec, trial, config)

    def fail_stuck(reason):  # from the watchdog's thread, before it ends this process
        fail_trial(study, trial, f"{TrialTimeout.__name__}: {reason}")

    watchdog = Watchdog(options.trial_timeout_s, stall_timeout_s(), on_stuck=[fail_stuck],
                        what=f"trial {trial.number}", last_resort=worker.last_resort)
    try:
        with Heartbeat(storage, trial_id), watchdog:
            history, _ = execute(config, worker.tracking and replace(worker.tracking, tags=tags),
                                 data_dir=options.data_dir, on_eval=on_eval,
                                 on_start=lambda run_id: trial.set_user_attr(RUN_ID, run_id), watchdog=watchdog)
    except Stop as stop:
        trial.set_user_attr("pruned", str(stop))
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    except KeyboardInterrupt:
        fail_trial(study, trial, INTERRUPTED)
        raise
    except WriterDied as died:  # not the trial's fault: `work` queues it again, and the next run starts a writer
        fail_trial(study, trial, f"{WRITER_DIED} ({died})")
        return "writer died"
    except StoreError as refused:  # FAILED (queued again on resume); `work` stops if the whole store refuses
        fail_trial(study, trial, f"StoreError: {refused}")
        if refused.store_wide:
            raise
        return "failed"
    except Exception as error:  # noqa: BLE001  one failing trial must not stop the sweep: FAIL it, with the message
        fail_trial(study, trial, f"{type(error).__name__}: {error}")
        return "failed"
    trial.set_user_attr(DIVERGED, history.diverged)
    trial.set_user_attr("lr", config.lr)
    study.tell(trial, objective_value(history.final.get(spec.metric), history.diverged, spec.direction))
    return "complete"


def work(spec: Spec, options: WorkerOptions, on_trial_done=None, stop: threading.Event | None = None,
         planned=None, last_resort=None) -> None:
    """Take queued trials until the queue is empty, or `stop` is set (after the current trial).
    `planned`: what to queue again when a dead worker's trial is recovered (default: the first phase).
    A trial whose writer died is queued again at once; a store that refuses every write (StoreError,
    store_wide) stops this worker: more trials would only fail the same way, and stay queued.
    `last_resort`: what ends a trial stuck where nothing reaches it (processes.Watchdog)."""
    url, tracking_uri = options.storage, options.tracking_uri
    storage = open_storage(url)
    queue = Queue(spec, storage)
    tracking = None
    if tracking_uri:
        writer = start_writer(tracking_uri)  # it looks the experiment up too, without an MLflow client here
        tracking = Tracking(tracking_uri, spec.name, options.experiment_id or writer.experiment(
            spec.name, artifact_location(tracking_uri, spec.name)), parent_run_id=options.parent_run_id)
    worker = Worker(spec, queue, options, tracking, last_resort)
    while stop is None or not stop.is_set():
        group = []
        try:
            with stops_deferred():  # a stop as trials are taken acts once each is in `group`, to be failed below
                claimed = queue.take()
                if claimed is not None:
                    group.append(claimed)
                    if spec.stack_seeds:  # the other seeds of its configuration, to train as one stack
                        limit = spec.max_stack or max_stack(claimed[1].user_attrs.get("device") or "cpu")
                        group += queue.take_siblings(claimed[1].user_attrs, limit - 1)
            if claimed is None:
                # another machine's worker may have died meanwhile: queue its trials again, or stop
                with planning_lock(url, spec.name):
                    study = open_study(spec, storage)
                    recovered = recover_dead_trials(study, storage, tracking_uri, wait_for_unmarked=True)
                    requeued = recovered and enqueue_missing(study, planned or plan(spec)[0],
                                                             (spec.metric, spec.direction), skip=timed_out_keys(study))
                if requeued:
                    continue
                return
            study, trial, trial_id = claimed
            states = (run_stacked_trials(worker, group) if len(group) > 1
                      else [run_trial(worker, study, trial, trial_id)])
        except KeyboardInterrupt:  # also when it came before run_trial could record it
            for _, _, taken_id in group:
                fail_if_running(storage, taken_id, INTERRUPTED)
            raise
        for (study, _, trial_id), state in zip(group, states):
            if state == "writer died":
                rerun_after_writer_death(spec, url, study, storage.get_trial(trial_id))
            if on_trial_done is not None:
                on_trial_done(state)


def rerun_after_writer_death(spec: Spec, url: str, study, trial) -> None:
    """Queue the configuration of `trial` (failed when its writer died) again, now, in this sweep."""
    key = trial_key(trial.user_attrs)
    with planning_lock(url, spec.name):
        deaths = sum(trial_key(t.user_attrs) == key and str(t.user_attrs.get(ERROR, "")).startswith(WRITER_DIED)
                     for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        queued = deaths <= WRITER_RERUNS and requeue(study, trial)
    print(f"optimstudy: trial {trial.number}: {WRITER_DIED}; "
          + ("queued again, with a new writer" if queued else
             f"not queued again ({deaths} writer deaths for this configuration)" if deaths > WRITER_RERUNS else
             "queued again already"), file=sys.stderr, flush=True)


def worker_main(argv: list[str]) -> int:
    """`python -m optimstudy.sweep.trials` with WORKER-JSON in OPTIMSTUDY_WORKER_OPTIONS (it holds the store
    URIs, which a command line would show to every user), or WORKER-JSON as `argv[0]` (a forked
    worker): one extra worker process of a sweep.

    On Linux it dies with the sweep that started it (processes.die_with_parent: its trial is then
    failed and queued again by the next command). Elsewhere it stops after its trial when the sweep
    is gone: the sweep holds the write end of a pipe whose read end is ours, so the pipe closes when
    the sweep dies, however it dies.
    """
    if not argv:  # a fresh process (a forked worker set this up as it was forked): it dies with its sweep
        die_with_parent(os.getppid())
    options = WorkerOptions.from_json(argv[0] if argv else os.environ.pop(WORKER_OPTIONS))
    stop = threading.Event()

    def watch(fd):
        while os.read(fd, 1):
            pass
        stop.set()

    threading.Thread(target=watch, args=(options.alive_fd,), daemon=True).start()

    for sig in STOP_SIGNALS:  # this process's whole life: Ctrl-C's way out (its trial FAIL, queued again)
        signal.signal(sig, raise_interrupt)

    try:
        work(load_spec(options.spec_path), options, stop=stop)
    except KeyboardInterrupt:
        return 130
    except StoreError:  # the store refuses writes: this worker stops; its trial is FAIL (and says why), the rest queued
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
