"""Sweeps: an experiment spec run as one Optuna study and one MLflow parent run.

    optimstudy sweep experiments/quickstart.toml --workers 2

One trial is one run: one configuration x one seed x one device. Every configuration the
spec asks for is put in the study's queue once (enqueued), before any worker starts, and
workers take trials from that queue atomically, so no configuration runs twice, even with
workers on several machines. A grid is the queue itself; a search queues each optimizer's
trial budget with the optimizer fixed and lets the sampler choose the rest; confirmation
queues each optimizer's best configuration with new seeds once tuning is done.

Running the same command again resumes: finished trials are kept, trials of a dead worker
are found (its pid is gone, or its heartbeat is stale) and queued again.
"""
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from optimstudy.config import RunConfig, default_threads
from optimstudy.devices import available_devices, device_is_present, resolve_device
from optimstudy.errors import UsageError
from optimstudy.problems import PROBLEMS
from optimstudy.spec import Spec, config_key, load_spec

HEARTBEAT_S = 10  # a running trial records a heartbeat this often
STALE_AFTER_S = 60  # a trial on another machine with no heartbeat for this long is dead
KEY, PHASE, CONFIG, SPACE, SLOT = "optimstudy.key", "optimstudy.phase", "optimstudy.config", "optimstudy.space", "optimstudy.slot"
RUN_ID, ERROR, DIVERGED = "mlflow_run_id", "optimstudy.error", "diverged"


@dataclass(frozen=True)
class Planned:
    """One trial the spec asks for: a full config, or (search) a config whose `space` is sampled."""

    key: str
    phase: str  # "grid", "run", "search" or "confirm"
    config: RunConfig
    label: str  # the optimizer's label in the spec
    space: dict = field(default_factory=dict)
    slot: str = ""  # search: the group whose budget this trial belongs to


# ---- planning -------------------------------------------------------------------------------

def plan(spec: Spec) -> tuple[list[Planned], dict[str, int]]:
    """Every trial of the first phase, and how many trials each absent device would have had."""
    planned, absent = [], []
    devices = []
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
                    if spec.search is None:
                        for lr in optimizer.lrs:
                            for seed in spec.seeds:
                                config = spec.base_config(problem, optimizer, lr, seed, device, **settings)
                                planned.append(Planned(config_key(config), "grid", config, optimizer.label))
                    else:  # lr here is a placeholder: each trial's sampler chooses it
                        config = spec.base_config(problem, optimizer, optimizer.space["lr"][0], spec.seeds[0],
                                                  device, **settings)
                        slot = config_key(replace(config, lr=1.0))
                        for index in range(spec.search.trials):
                            planned.append(Planned(f"search {index} {slot}", "search", config, optimizer.label,
                                                   optimizer.space, slot))
    for run in spec.runs:
        for device in devices:
            for seed in spec.seeds:
                fields = {k: v for k, v in run.items() if k != "label"}
                config = RunConfig(**fields, seed=seed, device=device, **spec.budget,
                                   **{k: v for k, v in spec.scalar_settings().items() if k not in fields})
                planned.append(Planned(config_key(config), "run", config, run.get("label", run["optimizer"])))
    per_device = len(planned) // len(devices) if devices else 0
    return planned, {device: per_device for device in absent}


def skip_notes(skipped: dict[str, int]) -> list[str]:
    return [f"skipped {count} trials on device '{device}': not available on this machine "
            f"(available: {', '.join(available_devices())})" for device, count in skipped.items()]


# ---- storages -------------------------------------------------------------------------------

def default_storage_path(spec_name: str) -> Path:
    return Path.cwd() / "mlruns" / "optuna" / f"{spec_name}.journal"


def storage_url(url: str | None, spec_name: str) -> str:
    return url or str(default_storage_path(spec_name))


def open_existing_storage(url: str, hint: str):
    """open_storage for commands that read a study: a journal file must already exist."""
    if "://" not in url and not Path(url).exists():
        raise UsageError(f"no study storage at '{url}': {hint}")
    return open_storage(url)


def open_storage(url: str):
    """An RDB URL (postgresql://, sqlite:///, mysql://) or a journal file path."""
    import optuna

    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=STALE_AFTER_S)
        except Exception as error:
            raise UsageError(f"--storage '{url}' cannot be opened: {str(error).splitlines()[0][:300]}") from None
    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
    except OSError as error:
        raise UsageError(f"study storage '{path}' cannot be written ({error.strerror}); pass --storage") from None
    return optuna.storages.JournalStorage(backend)


def make_sampler(spec: Spec):
    import optuna

    search = spec.search
    seed = search.seed if search else 0
    if search is None:
        return optuna.samplers.RandomSampler(seed=seed)  # never asked: every grid trial is queued
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: Spec):
    import optuna

    pruner = spec.search.pruner if spec.search else "none"
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(spec: Spec, storage, create: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if create:
        return optuna.create_study(study_name=spec.name, storage=storage, direction=spec.direction,
                                   sampler=make_sampler(spec), pruner=make_pruner(spec), load_if_exists=True)
    return optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec),
                             pruner=make_pruner(spec))


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


def recover_dead_trials(study, tracking_uri: str | None) -> list[str]:
    """Fail RUNNING trials whose worker is gone and end their MLflow runs; returns what changed."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB storages: Optuna's own heartbeats
    changed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial_is_dead(trial):
            try:
                study._storage.set_trial_user_attr(trial._trial_id, ERROR, "its worker died mid-trial")
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process recovered it first
            changed.append(f"trial {trial.number}: worker {trial.user_attrs.get('pid')} is gone; marked FAIL")
    if tracking_uri:
        from optimstudy.tracking import end_orphaned_runs

        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        run_ids = [t.user_attrs[RUN_ID] for t in failed if RUN_ID in t.user_attrs]
        for run_id in end_orphaned_runs(tracking_uri, run_ids, "its worker died mid-trial"):
            changed.append(f"run {run_id}: left RUNNING by a dead worker; ended as KILLED")
    return changed


# ---- the queue ------------------------------------------------------------------------------

def enqueue_missing(study, planned: list[Planned]) -> int:
    """Queue every planned trial that has no queued, running or finished trial yet."""
    from optuna.trial import TrialState

    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    present = {t.user_attrs.get(KEY) for t in study.get_trials(deepcopy=False, states=live)}
    added = 0
    for item in planned:
        if item.key in present:
            continue
        attrs = {KEY: item.key, PHASE: item.phase, CONFIG: _config_json(item.config), "optimizer": item.label,
                 "problem": item.config.problem, "seed": item.config.seed, "device": item.config.device}
        if item.space:
            attrs[SPACE] = {k: list(v) for k, v in item.space.items()}
            attrs[SLOT] = item.slot
        study.enqueue_trial(params={} if item.space else {f"{item.label}.lr": item.config.lr}, user_attrs=attrs)
        added += 1
    return added


def _config_json(config: RunConfig) -> dict:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def _config_from_json(attrs: dict) -> RunConfig:
    values = dict(attrs)
    values["opt"] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.get("opt", {}).items()}
    return RunConfig(**values)


def claim(spec: Spec, storage):
    """Take one queued trial atomically (as Study.ask does), or None when the queue is empty."""
    import optuna
    from optuna.trial import TrialState

    study = open_study(spec, storage, create=False)  # a fresh Study: samplers see every finished trial
    study_id = storage.get_study_id_from_name(spec.name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return study, optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return study, None


def duplicate_of(study, trial) -> int | None:
    """Another trial of the same configuration that finished, or started first (several machines)."""
    from optuna.trial import TrialState

    key = trial.user_attrs.get(KEY)
    me = study._storage.get_trial(trial._trial_id)
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        if other.number == trial.number or other.user_attrs.get(KEY) != key:
            continue
        if other.state != TrialState.RUNNING or (other.datetime_start, other.number) < (me.datetime_start, me.number):
            return other.number
    return None


# ---- one worker -----------------------------------------------------------------------------

def objective_of(history, spec: Spec) -> float:
    worst = math.inf if spec.direction == "minimize" else -math.inf
    value = history.final.get(spec.metric)
    if history.diverged or value is None or not math.isfinite(value):
        return worst
    return value


class Heartbeat:
    """Records that a trial's worker is alive, every HEARTBEAT_S, until stopped."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id, self.stop_event = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop_event.wait(HEARTBEAT_S):
            self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            if hasattr(self.storage, "record_heartbeat"):
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        return False


def run_trial(spec: Spec, study, trial, tracking, parent_run_id: str | None, data_dir, threads) -> str:
    """Run one claimed trial to a final state; returns that state's name."""
    from optuna.trial import TrialState

    from optimstudy.runner import execute
    from optimstudy.train import Stop

    storage = study._storage
    for name, value in (("pid", os.getpid()), ("host", socket.gethostname()), ("heartbeat", time.time())):
        storage.set_trial_user_attr(trial._trial_id, name, value)
    attrs = trial.user_attrs
    other = duplicate_of(study, trial)
    if other is not None:
        storage.set_trial_user_attr(trial._trial_id, ERROR, f"duplicate of trial {other}; not run")
        study.tell(trial, state=TrialState.FAIL)
        return "duplicate"
    config = _config_from_json(attrs[CONFIG])
    label = attrs.get("optimizer", config.optimizer)
    if attrs.get(SPACE):
        sampled = {arg: trial.suggest_float(f"{label}.{arg}", low, high, log=log)
                   for arg, (low, high, log) in attrs[SPACE].items()}
        lr = sampled.pop("lr", config.lr)
        config = replace(config, lr=lr, opt={**config.opt, **sampled})
    else:
        lr = config.lr
        trial.suggest_float(f"{label}.lr", lr, lr, log=True)  # the queued value, shown as the trial's param
    config = replace(config, threads=threads or config.threads)

    def on_eval(step, metrics):
        value = metrics.get(spec.metric)
        if value is not None and math.isfinite(value) and step > 0:
            trial.report(value, step)
            if trial.should_prune():
                raise Stop(f"pruned at step {step} ({spec.metric} {value:.4g})")

    tags = {"optimstudy.kind": "trial", "optimstudy.study": spec.name, "optimstudy.trial": trial.number,
            "optimstudy.phase": attrs.get(PHASE, ""), "optimstudy.optimizer_label": label}
    try:
        with Heartbeat(storage, trial._trial_id):
            history, run_id = execute(
                config, tracking, data_dir=data_dir, parent_run_id=parent_run_id, tags=tags, on_eval=on_eval,
                on_start=lambda run_id: storage.set_trial_user_attr(trial._trial_id, RUN_ID, run_id))
    except Stop as stop:
        storage.set_trial_user_attr(trial._trial_id, "pruned", str(stop))
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    except KeyboardInterrupt:
        storage.set_trial_user_attr(trial._trial_id, ERROR, "interrupted (Ctrl-C); queued again on resume")
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # one failing trial must not stop the sweep: FAIL it, with the message
        storage.set_trial_user_attr(trial._trial_id, ERROR, f"{type(error).__name__}: {error}"[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    storage.set_trial_user_attr(trial._trial_id, DIVERGED, history.diverged)
    storage.set_trial_user_attr(trial._trial_id, "lr", config.lr)
    study.tell(trial, objective_of(history, spec))
    return "complete"


def work(spec: Spec, storage_url_: str, tracking_uri: str | None, parent_run_id: str | None, data_dir,
         threads: int | None, on_trial_done=None) -> None:
    """Take queued trials until the queue is empty (or the process that started us is gone)."""
    from optimstudy.runner import Tracking

    storage = open_storage(storage_url_)
    tracking = Tracking(tracking_uri, spec.name) if tracking_uri else None
    if tracking_uri:
        from optimstudy.tracking import start_writer

        start_writer(tracking_uri)
    parent_pid = os.getppid()
    while os.getppid() == parent_pid:
        study, trial = claim(spec, storage)
        if trial is None:
            # another machine's worker may have died meanwhile: queue its trials again, or stop
            if recover_dead_trials(study, tracking_uri) and enqueue_missing(study, plan(spec)[0]):
                continue
            return
        state = run_trial(spec, study, trial, tracking, parent_run_id, data_dir, threads)
        if on_trial_done is not None:
            on_trial_done(state)


def worker_main(argv: list[str]) -> int:
    """`python -m optimstudy.sweep WORKER-JSON`: one worker process of a multi-worker sweep."""
    options = json.loads(argv[0])
    try:
        work(load_spec(options["spec"]), options["storage"], options["tracking_uri"], options["parent_run_id"],
             options["data_dir"], options["threads"])
    except KeyboardInterrupt:
        return 130
    return 0


# ---- the sweep ------------------------------------------------------------------------------

def counts(study) -> dict:
    from optuna.trial import TrialState

    result = {"complete": 0, "pruned": 0, "failed": 0, "waiting": 0, "running": 0, "duplicates": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.WAITING: "waiting", TrialState.RUNNING: "running"}
    for trial in study.get_trials(deepcopy=False):
        duplicate = trial.state == TrialState.FAIL and str(trial.user_attrs.get(ERROR, "")).startswith("duplicate")
        result["duplicates" if duplicate else names[trial.state]] += 1
    return result


def run_phase(spec, study, storage_url_, tracking_uri, parent_run_id, data_dir, workers, threads, label) -> None:
    """Run the queue to empty with `workers` workers, with a progress bar.

    This process is one of the workers (it has imported torch and loaded the data already);
    the others are fresh processes, started first so that their start-up overlaps our work.
    """
    from optimstudy.cli import progress_bar

    total = counts(study)
    todo = total["waiting"]
    if todo == 0:
        return
    print(f"{label}: {todo} trials to run with {workers} worker{'s' if workers > 1 else ''} "
          f"({threads} torch thread{'s' if threads > 1 else ''} each)", file=sys.stderr, flush=True)
    done_before = total["complete"] + total["pruned"] + total["failed"]
    options = {"spec": spec.path, "storage": storage_url_, "tracking_uri": tracking_uri,
               "parent_run_id": parent_run_id, "data_dir": data_dir, "threads": threads}
    others = [subprocess.Popen([sys.executable, "-m", "optimstudy.sweep", json.dumps(options)],
                               start_new_session=True) for _ in range(workers - 1)]
    with progress_bar(label, unit="trial") as progress:
        def report(*_):
            if progress is not None:
                now = counts(study)
                progress(now["complete"] + now["pruned"] + now["failed"] - done_before, todo)

        try:
            work(spec, storage_url_, tracking_uri, parent_run_id, data_dir, threads, on_trial_done=report)
            while any(p.poll() is None for p in others):
                report()
                time.sleep(0.5)
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
    bad = [p.returncode for p in others if p.returncode not in (0, 130)]
    if bad:
        raise RuntimeError(f"{len(bad)} sweep worker(s) exited with codes {bad}")


def confirm_plan(spec: Spec, study) -> list[Planned]:
    """Each optimizer's best configuration (tuned on the spec's seeds) again with new seeds."""
    if not spec.confirm_seeds:
        return []
    planned = []
    new_seeds = range(max(spec.seeds) + 1, max(spec.seeds) + 1 + spec.confirm_seeds)
    for group in best_configurations(spec, study):
        for seed in new_seeds:
            config = replace(group["config"], seed=seed)
            planned.append(Planned(config_key(config), "confirm", config, group["optimizer"]))
    return planned


def best_configurations(spec: Spec, study, phases=("grid", "search")) -> list[dict]:
    """Per (problem, optimizer, setting, device): the config with the best mean objective over seeds."""
    from optuna.trial import TrialState

    groups: dict = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get(PHASE) not in phases:
            continue
        config = _config_from_json(trial.user_attrs[CONFIG])
        label = trial.user_attrs.get("optimizer")
        group_key = (label, config_key(replace(config, lr=1.0, seed=0)))  # before sampled arguments
        if trial.user_attrs.get(SPACE):
            sampled = {k.split(".", 1)[1]: v for k, v in trial.params.items()}
            config = replace(config, lr=sampled.pop("lr", config.lr), opt={**config.opt, **sampled})
        candidates = groups.setdefault(group_key, {"optimizer": label, "configs": {}})
        candidates["configs"].setdefault(config_key(replace(config, seed=0)), (config, []))[1].append(trial.value)
    better = min if spec.direction == "minimize" else max
    result = []
    for group in groups.values():
        scored = [(statistics.fmean(values), config, values) for config, values in group["configs"].values()]
        mean, config, values = better(scored, key=lambda item: item[0])
        lrs = sorted({c.lr for c, _ in group["configs"].values()})
        result.append({"optimizer": group["optimizer"], "config": replace(config, seed=spec.seeds[0]),
                       "mean": mean, "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                       "seeds": len(values), "lrs": lrs})
    return sorted(result, key=lambda g: (g["config"].problem, g["optimizer"]))


def edge_warnings(spec: Spec, best: list[dict]) -> list[str]:
    warnings = []
    for group in best:
        config, lrs = group["config"], group["lrs"]
        plan_ = next(o for o in spec.optimizers if o.label == group["optimizer"]) if any(
            o.label == group["optimizer"] for o in spec.optimizers) else None
        if plan_ is not None and plan_.space.get("lr"):
            low, high, _ = plan_.space["lr"]
            position = math.log(config.lr / low) / math.log(high / low)
            at_edge = position < 0.05 or position > 0.95
        else:
            at_edge = len(lrs) > 1 and config.lr in (lrs[0], lrs[-1])
        if at_edge:
            side = "smallest" if config.lr <= (lrs[0] if lrs else config.lr) else "largest"
            warnings.append(f"{config.problem}/{group['optimizer']}: best lr {config.lr:g} is the {side} tried "
                            f"({lrs[0]:g}..{lrs[-1]:g}); widen the grid past it")
    return warnings


def ensure_parent_run(spec: Spec, study, tracking_uri: str) -> str:
    """The sweep's MLflow parent run: created once, reopened on resume."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from optimstudy.tracking import experiment_id

    client = MlflowClient(tracking_uri)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            if client.get_run(run_id).info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "optimstudy.pid", os.getpid())
            client.set_tag(run_id, "host", socket.gethostname())
            return run_id
        except Exception:
            pass  # the tracking store was replaced: start a new parent run
    tags = {"optimstudy.kind": "sweep", "optimstudy.study": spec.name, "optimstudy.pid": os.getpid(),
            "host": socket.gethostname(), "optimstudy.spec": spec.path, "mlflow.note.content": spec.description}
    run = client.create_run(experiment_id(tracking_uri, spec.name), tags={k: str(v) for k, v in tags.items()},
                            run_name=f"sweep {spec.name}")
    params = {"spec": spec.path, "mode": "search" if spec.search else "grid", "problems": ",".join(spec.problems),
              "optimizers": ",".join(o.label for o in spec.optimizers), "seeds": ",".join(map(str, spec.seeds)),
              "devices": ",".join(spec.devices), "objective_metric": spec.metric, "objective_direction": spec.direction,
              "confirm_seeds": spec.confirm_seeds, **spec.budget}
    if spec.search:
        params.update(sampler=spec.search.sampler, trials_per_optimizer=spec.search.trials, pruner=spec.search.pruner)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    if spec.text:
        client.log_text(run.info.run_id, spec.text, "spec.toml")
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def format_table(best: list[dict], spec: Spec, confirmed: dict) -> str:
    lines = [f"{'problem':15} {'optimizer':12} {'best lr':>9}  {spec.metric} (mean ± std, seeds)"]
    for group in best:
        config = group["config"]
        row = (f"{config.problem:15} {group['optimizer']:12} {config.lr:9.3g}  "
               f"{group['mean']:.4g} ± {group['std']:.2g} (n={group['seeds']})")
        values = confirmed.get(config_key(replace(config, seed=0)))
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            row += f"   confirmed on {len(values)} new seeds: {statistics.fmean(values):.4g} ± {spread:.2g}"
        lines.append(row)
    return "\n".join(lines)


def confirmed_values(study) -> dict:
    from optuna.trial import TrialState

    result: dict = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get(PHASE) == "confirm":
            config = _config_from_json(trial.user_attrs[CONFIG])
            result.setdefault(config_key(replace(config, seed=0)), []).append(trial.value)
    return result


def sweep_command(args) -> int:
    spec = load_spec(args.spec)
    if args.workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {args.workers}")
    planned, skipped = plan(spec)
    if args.dry_run:
        print_dry_run(spec, planned, skipped)
        return 0
    if not planned:
        raise UsageError(f"{spec.path}: no trial can run on this machine: devices {', '.join(skipped)} are absent "
                         f"(available: {', '.join(available_devices())})")

    from optimstudy.runner import load_data
    from optimstudy.tracking import ensure_store, resolve_tracking_uri, start_writer, stop_writers

    for problem in dict.fromkeys(item.config.problem for item in planned):  # fail on missing data before writing
        load_data(next(item.config for item in planned if item.config.problem == problem), args.data_dir)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    ensure_store(tracking_uri)  # created once, here, before any worker starts
    start_writer(tracking_uri)  # this process is a worker too; the writer's start-up overlaps opening the study
    url = storage_url(args.storage, spec.name)
    storage = open_storage(url)
    study = open_study(spec, storage, create=True)
    parent_run_id = ensure_parent_run(spec, study, tracking_uri)
    for line in skip_notes(skipped):
        print(f"note: {line}", file=sys.stderr)
    for line in recover_dead_trials(study, tracking_uri):
        print(f"recovered: {line}", file=sys.stderr)
    threads = spec.settings.get("threads") or default_threads(args.workers)
    workers = args.workers
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    started = time.perf_counter()
    before = counts(study)
    status = "FAILED"
    try:
        added = enqueue_missing(study, planned)
        if added == 0 and counts(study)["waiting"] == 0 and not spec.confirm_seeds:
            print(f"sweep '{spec.name}': all {len(planned)} trials already done; nothing to run", file=sys.stderr)
        run_phase(spec, study, url, tracking_uri, parent_run_id, args.data_dir, workers, threads, spec.name)
        confirm = confirm_plan(spec, study)
        if confirm and enqueue_missing(study, confirm):
            run_phase(spec, study, url, tracking_uri, parent_run_id, args.data_dir, workers, threads,
                      f"{spec.name} confirm")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        client.set_tag(parent_run_id, ERROR, "interrupted (Ctrl-C); run the same command to resume")
        raise
    finally:
        client.set_terminated(parent_run_id, status)
        stop_writers()
    best = best_configurations(spec, study)
    warnings = edge_warnings(spec, best)
    final = counts(study)
    client.set_tag(parent_run_id, "optimstudy.edge_warnings", json.dumps(warnings))
    for name, value in final.items():
        client.log_metric(parent_run_id, f"trials_{name}", value)
    new = sum(final[k] for k in ("complete", "pruned", "failed")) - sum(before[k] for k in ("complete", "pruned", "failed"))
    print(format_table(best, spec, confirmed_values(study)))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"sweep '{spec.name}': {new} trials run now in {time.perf_counter() - started:.1f} s; study totals: "
          f"{final['complete']} complete, {final['pruned']} pruned, {final['failed']} failed; "
          f"parent run {parent_run_id}; see `optimstudy ui` and `optimstudy report`", file=sys.stderr)
    if args.json:
        print(json.dumps({"study": spec.name, "storage": url, "tracking_uri": tracking_uri,
                          "parent_run_id": parent_run_id, "new_trials": new,
                          "trials": {"complete": final["complete"], "pruned": final["pruned"],
                                     "failed": final["failed"], "skipped": sum(skipped.values())},
                          "best": [{"problem": g["config"].problem, "optimizer": g["optimizer"], "lr": g["config"].lr,
                                    "mean": g["mean"], "std": g["std"], "seeds": g["seeds"]} for g in best],
                          "edge_warnings": warnings}))
    return 0


def print_dry_run(spec: Spec, planned: list[Planned], skipped: dict[str, int]) -> None:
    print(f"sweep '{spec.name}' ({spec.path}): {len(planned)} trials, "
          f"{'search: ' + spec.search.sampler if spec.search else 'grid'}, budget {spec.budget}")
    for number, item in enumerate(planned):
        c = item.config
        lr = "sampled" if item.space else f"{c.lr:g}"
        extras = f"batch={c.batch_size} loss={c.loss or PROBLEMS[c.problem].default_loss}"
        extras += ("" if c.zero_grad else " no-zero-grad") + (f" accumulate={c.accumulate}" if c.accumulate > 1 else "")
        print(f"{number:4d} {item.phase:7} {c.problem:15} {item.label:10} lr={lr:9} seed={c.seed} {c.device:6} {extras}")
    if spec.confirm_seeds:
        print(f"then: each optimizer's best configuration on {spec.confirm_seeds} new seeds")
    for line in skip_notes(skipped):
        print(f"note: {line}")


def dashboard_command(args) -> int:
    if args.spec is None and args.storage is None:
        raise UsageError("give an experiment spec or --storage URL")
    name = load_spec(args.spec).name if args.spec else None
    url = storage_url(args.storage, name) if name else args.storage
    open_existing_storage(url, f"run `optimstudy sweep {args.spec}` first")
    from optimstudy.serve import installed_program, run_server

    dashboard = installed_program("optuna-dashboard")

    return run_server([dashboard, url, "--host", args.host, "--port", str(args.port)],
                      f"optuna-dashboard on {url}\n  open http://{args.host}:{args.port}  (Ctrl-C stops it)")


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
