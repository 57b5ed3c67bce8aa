"""`optimstudy check`: do a sweep's Optuna study and its MLflow runs agree? Repair what is safe.

    optimstudy check experiments/quickstart.toml            # exit 0 when all agree, 1 if not

Checks that every complete trial has exactly one FINISHED run holding every step; that every
optimizer label of the spec has finished runs; that each configuration was queued once (several
commands planning at once would queue it twice); that the study has one parent run holding all its
trial runs; that a search's trials sampled different values; and that no trial or run is RUNNING
without a live worker (those are ended: trials FAIL, runs KILLED; --dry-run only reports them).
"""
import json
import socket
import sys

import optuna
from optuna.trial import TrialState

from optimstudy.errors import UsageError
from optimstudy.sweep.queue import CONFIG, ERROR, LIVE, SLOT, SPACE, trial_key
from optimstudy.sweep.spec_reader import load_spec
from optimstudy.sweep.storages import open_existing_storage, storage_url, study_exists
from optimstudy.sweep.trials import PARENT_RUN, RUN_ID, pid_alive, recover_dead_trials, trial_is_dead
from optimstudy.tracking.client import end_orphaned_runs, resolve_tracking_uri
from optimstudy.tracking.connectivity import hide_passwords
from optimstudy.tracking.reader import assert_intact, load_runs


def check(spec_path=None, *, experiment: str | None = None, storage: str | None = None,
          tracking_uri: str | None = None, dry_run: bool = False) -> int:
    if spec_path is None and experiment is None:
        raise UsageError("give an experiment spec or --experiment NAME")
    spec = load_spec(spec_path) if spec_path else None
    name = spec.name if spec else experiment
    experiment = experiment or name
    tracking_uri = resolve_tracking_uri(tracking_uri)
    url = storage_url(storage, name)
    storage_ = open_existing_storage(url, f"run `optimstudy sweep` for '{name}' first, or pass --storage")
    if not study_exists(storage_, name):
        raise UsageError(f"no study named '{name}' in '{hide_passwords(url)}'")
    study = optuna.load_study(study_name=name, storage=storage_)

    repairs, problems = [], []
    if dry_run:
        problems += [f"trial {t.number} is RUNNING but its worker is gone" for t in
                     study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if trial_is_dead(t)]
    else:
        repairs += recover_dead_trials(study, storage_, tracking_uri)
    trials = study.get_trials(deepcopy=False)
    frame = load_runs(tracking_uri, experiments=[experiment], metrics=["train_loss", "wall_s"])
    runs = load_runs(tracking_uri, experiments=[experiment], with_metrics=False)
    if len(runs) < sum(t.state == TrialState.COMPLETE for t in trials):
        assert_intact(tracking_uri)  # fewer runs than complete trials: is the store damaged?
    problems += _runs_of_complete_trials(trials, frame, runs)
    problems += _labels_without_runs(spec, trials, runs) if spec else []
    problems += _queued_more_than_once(trials)
    problems += _split_parent_runs(study, trials, runs, name)
    problems += _repeated_samples(trials)

    running_trials = {t.user_attrs.get(RUN_ID) for t in trials if t.state == TrialState.RUNNING}
    orphans = []
    for row in runs.itertuples() if len(runs) else []:
        if row.status != "RUNNING" or row.run_id in running_trials:
            continue
        if row.kind == "sweep":
            pid = getattr(row, "pid", None)
            if row.host == socket.gethostname() and pid and str(pid).isdigit() and pid_alive(int(pid)):
                continue  # a sweep in progress
        orphans.append(row.run_id)
    if orphans and dry_run:
        problems += [f"run {r} is RUNNING with no live process" for r in orphans]
    elif orphans:
        for run_id in end_orphaned_runs(tracking_uri, orphans,
                                        "found RUNNING with no live process by optimstudy check"):
            repairs.append(f"run {run_id}: RUNNING with no live process; ended as KILLED")

    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    print(f"study '{name}' ({hide_passwords(url)}) and experiment '{experiment}' "
          f"({hide_passwords(tracking_uri)}):")
    print("  trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; runs: {len(runs)}")
    for line in repairs:
        print(f"  repaired: {line}")
    for line in problems:
        print(f"  problem: {line}")
    if not problems:
        print("  ok: every complete trial has exactly one finished run with its full step history; every "
              "label of the spec has runs; every configuration queued once; one parent run; no repeated samples; "
              "nothing RUNNING without a live process")
        return 0
    print(f"  {len(problems)} problem(s) found", file=sys.stderr)
    return 1


def _runs_of_complete_trials(trials, frame, runs) -> list[str]:
    status = dict(zip(runs["run_id"], runs["status"])) if len(runs) else {}
    train_steps = (frame[frame["metric"] == "train_loss"].groupby("run_id", observed=True)["step"]
                   .agg(["count", "min", "max"]) if len(frame) else None)
    finals = set(frame.loc[frame["metric"] == "wall_s", "run_id"]) if len(frame) else set()
    finished = {}
    for trial, state in zip(runs.get("trial", []), runs.get("status", [])):
        if state == "FINISHED":
            finished[trial] = finished.get(trial, 0) + 1
    problems = []
    for trial in (t for t in trials if t.state == TrialState.COMPLETE):
        run_id = trial.user_attrs.get(RUN_ID)
        if run_id is None or run_id not in status:
            problems.append(f"trial {trial.number} is complete but its MLflow run is missing")
        elif status[run_id] != "FINISHED":
            problems.append(f"trial {trial.number} is complete but run {run_id} is {status[run_id]}")
        elif finished.get(trial.number, 0) != 1:
            problems.append(f"trial {trial.number} has {finished.get(trial.number, 0)} finished runs, expected 1")
        elif train_steps is None or run_id not in train_steps.index:
            problems.append(f"trial {trial.number}: run {run_id} has no step history")
        else:
            count, first, last = train_steps.loc[run_id]
            if not (first == 1 and count == last) or run_id not in finals:
                problems.append(f"trial {trial.number}: run {run_id} holds {count} of {last} steps"
                                + ("" if run_id in finals else " and no final metrics"))
    return problems


def _labels_without_runs(spec, trials, runs) -> list[str]:
    """A label the spec declares but no finished run carries: its trials never ran (or were never
    queued, as when two labels of one configuration shared a key), so it is missing from every verdict."""
    labels = [o.label for o in spec.optimizers] + [run.get("label", run["optimizer"]) for run in spec.runs]
    finished = set(runs.loc[runs["status"] == "FINISHED", "optimizer_label"].dropna()) if len(runs) else set()
    problems = []
    for label in dict.fromkeys(labels):
        if label in finished:
            continue
        states: dict = {}
        for trial in trials:
            if trial.user_attrs.get("optimizer") == label:
                states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
        held = ", ".join(f"{count} {state}" for state, count in states.items()) or "none queued"
        problems.append(f"label '{label}' of the spec has no finished runs (its trials: {held}); "
                        f"`optimstudy sweep {spec.path}` queues and runs what is missing")
    return problems


def _queued_more_than_once(trials) -> list[str]:
    """A configuration with two live trials, or a trial failed as a duplicate, was queued twice."""
    queued: dict = {}
    for trial in trials:
        duplicate = str(trial.user_attrs.get(ERROR, "")).startswith("duplicate")
        if trial.state in LIVE or duplicate:
            queued.setdefault(trial_key(trial.user_attrs), []).append(trial)
    return [f"configuration queued {len(same)} times (trials {[t.number for t in same]}): {_describe(same[0])}"
            for key, same in queued.items() if key is not None and len(same) > 1]


def _describe(trial) -> str:
    config = trial.user_attrs.get(CONFIG, {})
    return (f"{config.get('problem')} {trial.user_attrs.get('optimizer')} lr={config.get('lr')} "
            f"seed={config.get('seed')} {trial.user_attrs.get('optimstudy.phase', '')}").strip()


def _split_parent_runs(study, trials, runs, name: str) -> list[str]:
    """One study, one parent run: every trial run under the study's own parent."""
    if not len(runs):
        return []
    parent = study.user_attrs.get(PARENT_RUN)
    own = runs[runs["study"] == name]
    parents = sorted(own.loc[own["kind"] == "sweep", "run_id"])
    problems = []
    if len(parents) > 1:
        problems.append(f"{len(parents)} parent runs for one study ({', '.join(parents)}); expected 1")
    trial_runs = {t.user_attrs.get(RUN_ID) for t in trials} - {None}
    children = own[own["run_id"].isin(trial_runs)]
    elsewhere = children[children["parent_run_id"] != parent]
    if parent and len(elsewhere):
        problems.append(f"{len(elsewhere)} trial runs are not under the study's parent run {parent} "
                        f"(under {', '.join(sorted(set(elsewhere['parent_run_id'].dropna())))})")
    return problems


def _repeated_samples(trials) -> list[str]:
    """A search whose trials sampled the same values is not searching."""
    seen: dict = {}
    for trial in trials:
        if trial.user_attrs.get(SPACE) and trial.params:
            values = json.dumps(trial.params, sort_keys=True)
            seen.setdefault((trial.user_attrs.get(SLOT), values), []).append(trial.number)
    return [f"search trials {numbers} sampled identical values {values}"
            for (_, values), numbers in seen.items() if len(numbers) > 1]
