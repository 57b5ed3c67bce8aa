"""`optimstudy check`: do a sweep's Optuna study and its MLflow runs agree? Repair what is safe.

Checks that every complete trial has exactly one FINISHED run holding every step, that no
trial or run is RUNNING without a live worker (those are ended: trials FAIL, runs KILLED),
and that no configuration completed twice. Exit 0 when all agree (after repairs), 1 if not.
"""
import socket
import sys

from optimstudy.errors import UsageError


def check_command(args) -> int:
    from optimstudy.spec import load_spec
    from optimstudy.sweep import (KEY, RUN_ID, open_existing_storage, pid_alive, recover_dead_trials, storage_url,
                                  trial_is_dead)
    from optimstudy.tidy import load_runs
    from optimstudy.tracking import end_orphaned_runs, resolve_tracking_uri

    if args.spec is None and args.experiment is None:
        raise UsageError("give an experiment spec or --experiment NAME")
    name = load_spec(args.spec).name if args.spec else args.experiment
    experiment = args.experiment or name
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    url = storage_url(args.storage, name)
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_existing_storage(url, f"run `optimstudy sweep` for '{name}' first, or pass --storage")
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UsageError(f"no study named '{name}' in '{url}'") from None

    repairs, problems = [], []
    if args.dry_run:
        problems += [f"trial {t.number} is RUNNING but its worker is gone" for t in
                     study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if trial_is_dead(t)]
    else:
        repairs += recover_dead_trials(study, tracking_uri)
    trials = study.get_trials(deepcopy=False)
    frame = load_runs(tracking_uri, experiments=[experiment])
    runs = load_runs(tracking_uri, experiments=[experiment], with_metrics=False)
    status = dict(zip(runs["run_id"], runs["status"])) if len(runs) else {}
    train_steps = (frame[frame["metric"] == "train_loss"].groupby("run_id")["step"].agg(["count", "min", "max"])
                   if len(frame) else None)
    finals = set(frame.loc[frame["metric"] == "wall_s", "run_id"]) if len(frame) else set()

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for trial in complete:
        run_id = trial.user_attrs.get(RUN_ID)
        finished_runs = [r for r, t, s in zip(runs.get("run_id", []), runs.get("trial", []), runs.get("status", []))
                         if t == trial.number and s == "FINISHED"] if len(runs) else []
        if run_id is None or run_id not in status:
            problems.append(f"trial {trial.number} is complete but its MLflow run is missing")
        elif status[run_id] != "FINISHED":
            problems.append(f"trial {trial.number} is complete but run {run_id} is {status[run_id]}")
        elif len(finished_runs) != 1:
            problems.append(f"trial {trial.number} has {len(finished_runs)} finished runs, expected 1")
        elif train_steps is None or run_id not in train_steps.index:
            problems.append(f"trial {trial.number}: run {run_id} has no step history")
        else:
            count, first, last = train_steps.loc[run_id]
            if not (first == 1 and count == last) or run_id not in finals:
                problems.append(f"trial {trial.number}: run {run_id} holds {count} of {last} steps"
                                + ("" if run_id in finals else " and no final metrics"))

    keys = {}
    for trial in complete:
        keys.setdefault(trial.user_attrs.get(KEY), []).append(trial.number)
    for key, numbers in keys.items():
        if key is not None and len(numbers) > 1:
            problems.append(f"configuration completed {len(numbers)} times (trials {numbers})")

    running_trials = {t.user_attrs.get(RUN_ID) for t in trials if t.state == TrialState.RUNNING}
    orphans = []
    for row in runs.itertuples() if len(runs) else []:
        if row.status != "RUNNING" or row.run_id in running_trials:
            continue
        if row.kind == "sweep":
            pid = _tag(tracking_uri, row.run_id, "optimstudy.pid")
            if row.host == socket.gethostname() and pid and pid_alive(int(pid)):
                continue  # a sweep in progress
        orphans.append(row.run_id)
    if orphans and args.dry_run:
        problems += [f"run {r} is RUNNING with no live process" for r in orphans]
    elif orphans:
        for run_id in end_orphaned_runs(tracking_uri, orphans, "found RUNNING with no live process by optimstudy check"):
            repairs.append(f"run {run_id}: RUNNING with no live process; ended as KILLED")

    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    print(f"study '{name}' ({url}) and experiment '{experiment}' ({tracking_uri}):")
    print("  trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; runs: {len(runs)}")
    for line in repairs:
        print(f"  repaired: {line}")
    for line in problems:
        print(f"  problem: {line}")
    if not problems:
        print("  ok: every complete trial has exactly one finished run with its full step history; "
              "no configuration completed twice; nothing RUNNING without a live process")
        return 0
    print(f"  {len(problems)} problem(s) found", file=sys.stderr)
    return 1


def _tag(tracking_uri: str, run_id: str, key: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri).get_run(run_id).data.tags.get(key)
