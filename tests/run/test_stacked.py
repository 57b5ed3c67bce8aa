"""Seeds in one model (run/stacked.py): stacked seeds are the same runs as separate ones, or fall back.

Each equivalence test trains a few seeds stacked and each seed alone with `training.train`, and
compares every per-step metric, every evaluation and every final metric (each 1e-5 relative) and
the final weights (1e-5 relative in norm): the stacked matrix products sum in another order.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import in_process

from optimstudy.cli import main
from optimstudy.problems.optimizers import OPTIMIZERS, is_elementwise
from optimstudy.run.config import RunConfig
from optimstudy.run.runner import execute_seeds
from optimstudy.run.stacked import Stack, prepare_stack, train_stack
from optimstudy.run.training import train
from optimstudy.tag_names import TAG_STACKED

ELEMENTWISE = [name for name, spec in OPTIMIZERS.items() if spec.elementwise]
EXTRA = ["schedulefree:AdamWScheduleFree", "schedulefree:SGDScheduleFree", "lion_pytorch:Lion"]
LRS = {"sgd": 0.05, "momentum": 0.02, "nesterov": 0.02, "adagrad": 0.05, "schedulefree:SGDScheduleFree": 0.05}
TIMES = ("wall_s", "eval_s", "samples_per_s")  # the stack's time, not comparable


def close(a, b, what) -> None:
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        assert (a is None and b is None) or (math.isnan(a) and math.isnan(b)), (what, a, b)
        return
    assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), (what, a, b)


def assert_same_runs(stacked, alone) -> None:
    for s, a in zip(stacked, alone, strict=True):
        seed = a.config.seed
        assert s.config == a.config
        assert s.steps == a.steps, seed
        assert (s.diverged, s.diverged_at_step) == (a.diverged, a.diverged_at_step), seed
        assert s.step_metrics.keys() == a.step_metrics.keys()
        for name, values in a.step_metrics.items():
            for step, x, y in zip(a.steps, s.step_metrics[name], values, strict=True):
                close(x, y, (seed, name, step))
        assert [e["step"] for e in s.evals] == [e["step"] for e in a.evals]
        for es, ea in zip(s.evals, a.evals):
            for name in ea:
                close(es[name], ea[name], (seed, "eval", name, ea["step"]))
        assert s.final.keys() == a.final.keys()
        for name in a.final:
            close(s.final[name], a.final[name], (seed, "final", name))
        # weights: relative in norm; one element of a weight Adam moves by g/sqrt(v) with a tiny v can
        # differ by ~1e-5 of itself (5e-7 on 0.037 seen) when its gradient's last bits differ
        for (name, ws), wa in zip(s.model.named_parameters(), a.model.parameters()):
            ws, wa = ws.detach().double(), wa.detach().double()
            finite = wa.isfinite()
            assert torch.equal(ws.isfinite(), finite), (seed, name)  # a diverged run's weights: inf, NaN alike
            ws, wa = ws[finite], wa[finite]
            assert (ws - wa).norm() <= 1e-5 * wa.norm(), (seed, name, ((ws - wa).norm() / wa.norm()).item())


def stacked_and_alone(seeds=(0, 1, 2), **fields):
    configs = [RunConfig(seed=seed, threads=1, **fields) for seed in seeds]
    stack = prepare_stack(configs)
    assert isinstance(stack, Stack), stack
    return train_stack(stack), [train(c) for c in configs]


@pytest.mark.parametrize("optimizer", ELEMENTWISE + EXTRA)
def test_stacked_seeds_equal_separate_runs_on_linreg(optimizer):
    pytest.importorskip(optimizer.split(":")[0]) if ":" in optimizer else None
    assert is_elementwise(optimizer)
    # each seed its own batch order; the update norm every 3rd step, evaluations every 20 and a
    # flush at 50 (SYNC_EVERY) between them
    stacked, alone = stacked_and_alone(problem="linreg", optimizer=optimizer, lr=LRS.get(optimizer, 0.01), steps=70,
                                       eval_every=20, update_norm_every=3)
    assert_same_runs(stacked, alone)
    assert len({round(h.final["train_loss"], 6) for h in stacked}) == 3  # the seeds did differ


@pytest.mark.parametrize("optimizer", ELEMENTWISE + EXTRA)
def test_stacked_seeds_equal_separate_runs_on_the_mnist_mlp(optimizer, mnist_dir):
    pytest.importorskip(optimizer.split(":")[0]) if ":" in optimizer else None
    lr = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05,
          "schedulefree:SGDScheduleFree": 0.1}.get(optimizer, 1e-3)
    stacked, alone = stacked_and_alone(seeds=(0, 1), problem="mnist_mlp", optimizer=optimizer, lr=lr, steps=12,
                                       eval_every=6, update_norm_every=2)
    assert_same_runs(stacked, alone)


@pytest.mark.parametrize("fields", [
    {"batch_size": 100_000},  # full batches of one split: the same tensors for every seed
    {"vary": "init,order,data"},  # each seed its own train/validation split
    {"vary": "init,order,data", "batch_size": 100_000},
    {"accumulate": 2, "schedule": "cosine"},
    {"zero_grad": False},
], ids=["full-batch", "vary-data", "vary-data-full-batch", "accumulate-cosine", "no-zero-grad"])
def test_stacked_seeds_equal_separate_runs_in_every_batch_mode(fields):
    stacked, alone = stacked_and_alone(problem="linreg", optimizer="adam", lr=0.01, steps=30, eval_every=10,
                                       **fields)
    assert_same_runs(stacked, alone)


def test_the_valley_traces_each_seeds_weights():
    stacked, alone = stacked_and_alone(problem="valley", optimizer="momentum", lr=0.01, steps=20,
                                       vary="init,order,data")
    assert "w1" in stacked[0].step_metrics
    assert_same_runs(stacked, alone)


def test_a_diverging_seed_stops_alone_and_the_others_go_on():
    # seed 2 runs away at step 16 (found at the flush of step 30, an evaluation); seeds 0 and 1 do not
    stacked, alone = stacked_and_alone(problem="stacking_problems:seed_one_diverges", optimizer="sgd", lr=0.01,
                                       steps=150)
    assert [h.diverged for h in alone] == [False, False, True]
    assert_same_runs(stacked, alone)
    assert stacked[2].steps[-1] == alone[2].diverged_at_step == 16
    assert stacked[0].steps[-1] == 150


def test_a_pruned_seed_stops_alone_and_the_others_go_on():
    """A search trial's pruner raises errors.Stop from its on_eval: in a stack, only that seed stops."""
    from optimstudy.errors import Stop

    configs = [RunConfig(problem="linreg", optimizer="adam", lr=0.01, steps=40, eval_every=10, seed=seed, threads=1)
               for seed in (0, 1, 2)]
    stack = prepare_stack(configs)

    def prune_at_20(step, metrics):
        if step == 20:
            raise Stop("pruned at step 20")

    stacked = train_stack(stack, on_evals=[None, prune_at_20, None])
    assert list(stack.stopped) == [1] and str(stack.stopped[1]) == "pruned at step 20"
    assert stacked[1].steps[-1] == 20 and [e["step"] for e in stacked[1].evals] == [0, 10, 20]
    assert stacked[1].final == {}  # ended KILLED, as a pruned run alone: no final metrics
    assert_same_runs([stacked[0], stacked[2]], [train(configs[0]), train(configs[2])])


def test_a_users_optimizer_declared_elementwise_is_stacked():
    stacked, alone = stacked_and_alone(seeds=(3, 5), problem="linreg", optimizer="stacking_problems:DeclaredSGD",
                                       lr=0.05, steps=20)
    assert_same_runs(stacked, alone)


@pytest.mark.parametrize("fields, reason", [
    ({"optimizer": "muon", "lr": 0.02, "problem": "mnist_mlp"}, "optimizer 'muon' is not elementwise"),
    ({"optimizer": "prodigyopt:Prodigy", "lr": 1.0}, "optimizer 'prodigyopt:Prodigy' is not known to be elementwise"),
    ({"optimizer": "stacking_problems:UndeclaredSGD", "lr": 0.1}, "declare your class's with a class attribute"),
    ({"optimizer": "adam", "lr": 0.01, "clip_grad_norm": 1.0}, "clip_grad_norm"),
    ({"optimizer": "adam", "lr": 0.01, "problem": "stacking_problems:batch_norm"}, "BatchNorm in training mode"),
    ({"optimizer": "adam", "lr": 0.01, "problem": "stacking_problems:branchy"}, "cannot run under vmap"),
    ({"optimizer": "adam", "lr": 0.01, "problem": "stacking_problems:dropout"}, "cannot run under vmap"),
], ids=["muon", "prodigy", "undeclared", "clip_grad_norm", "batch_norm", "control-flow", "dropout"])
def test_what_cannot_be_stacked_runs_one_after_another_saying_why(fields, reason, request):
    if fields["optimizer"].startswith("prodigyopt"):
        pytest.importorskip("prodigyopt")
    if fields.get("problem") == "mnist_mlp":
        request.getfixturevalue("mnist_dir")
    fields = {"problem": "linreg", "steps": 3, "threads": 1, **fields}
    configs = [RunConfig(seed=seed, **fields) for seed in (0, 1)]
    said = []
    results = execute_seeds(configs, None, say=said.append)
    assert len(said) == 1 and reason in said[0] and said[0].startswith("seeds 0,1 run one after another"), said
    for (history, run_id), config in zip(results, configs):
        assert history.config.seed == config.seed and history.steps[-1] == 3 and run_id is None


def test_more_seeds_than_max_stack_make_several_stacks_in_order():
    configs = [RunConfig(problem="linreg", optimizer="adam", lr=0.01, steps=20, seed=seed, threads=1)
               for seed in (4, 5, 6)]
    said = []
    results = execute_seeds(configs, None, max_stack=2, say=said.append)  # a stack of 4, 5; then 6 alone
    assert said == [] and [history.config.seed for history, _ in results] == [4, 5, 6]
    assert_same_runs([history for history, _ in results], [train(c) for c in configs])


def test_other_runs_than_seeds_of_one_configuration_are_not_stacked():
    configs = [RunConfig(problem="linreg", optimizer="adam", lr=lr, steps=3) for lr in (0.01, 0.02)]
    assert prepare_stack(configs) == "the runs differ in more than their seed"


def test_a_tracked_stack_ends_a_pruned_seeds_run_killed_and_the_others_finished(tracking_uri, monkeypatch):
    """The runs end together (one frame, one transaction), each with the status a separate run ends with."""
    from mlflow.tracking import MlflowClient

    from optimstudy.errors import Stop
    from optimstudy.run.runner import Tracking, execute_stack
    from optimstudy.tracking.writer_handle import stop_writers

    monkeypatch.setenv("OPTIMSTUDY_SYSTEM_METRICS_S", "0")

    def prune_at_20(step, metrics):
        if step == 20:
            raise Stop("pruned at step 20")

    configs = [RunConfig(problem="linreg", optimizer="adam", lr=0.01, steps=40, eval_every=10, seed=seed, threads=1)
               for seed in (0, 1, 2)]
    try:
        results = execute_stack(prepare_stack(configs), Tracking(tracking_uri, "pruned"),
                                on_evals=[None, prune_at_20, None])
    finally:
        stop_writers()
    client = MlflowClient(tracking_uri)
    runs = [client.get_run(run_id) for _, run_id in results]
    assert [run.info.status for run in runs] == ["FINISHED", "KILLED", "FINISHED"]
    assert runs[1].data.tags["optimstudy.pruned"] == "pruned at step 20"
    assert "final_test_loss" not in runs[1].data.metrics and "final_test_loss" in runs[0].data.metrics
    for history, run_id in results:
        steps = sorted(m.step for m in client.get_metric_history(run_id, "train_loss"))
        assert steps == history.steps


def test_a_writer_killed_as_a_stack_ends_leaves_no_seeds_run_running(tracking_uri, monkeypatch):
    """Every seed's run ends FAILED, saying why, whichever of the stack's writes meets the dead writer."""
    from mlflow.tracking import MlflowClient

    from optimstudy.run.runner import Tracking, execute_stack
    from optimstudy.tracking.writer_handle import WriterDied, _writers, stop_writers

    monkeypatch.setenv("OPTIMSTUDY_SYSTEM_METRICS_S", "0")
    started = []

    def kill_the_writer(step, metrics):
        if step == 60:  # the last evaluation: what is left is the final metrics and the ends
            writer = _writers[tracking_uri].process
            writer.kill()
            writer.wait()

    configs = [RunConfig(problem="linreg", optimizer="adam", lr=0.01, steps=60, eval_every=20, seed=seed, threads=1)
               for seed in (0, 1, 2)]
    try:
        with pytest.raises(WriterDied, match="writer process exited"):
            execute_stack(prepare_stack(configs), Tracking(tracking_uri, "killed"),
                          on_evals=[kill_the_writer, None, None], on_starts=[started.append] * 3)
    finally:
        stop_writers(wait=False)
    client = MlflowClient(tracking_uri)
    for run_id in started:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and "writer process exited" in run.data.tags["optimstudy.error"]


@pytest.mark.slow
def test_optimstudy_run_stack_seeds_records_the_same_runs_as_separate_ones(tmp_path, tracking_uri):
    """The whole command, into a real MLflow store: each stacked seed is a run with the same params,
    curves and final metrics as the same seed run alone, and a tag naming the stack."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "OPTIMSTUDY_SYSTEM_METRICS_S": "0"}
    common = ["--problem", "linreg", "--optimizer", "adam", "--lr", "0.01", "--steps", "60", "--seeds", "0-2",
              "--tracking-uri", tracking_uri, "--json"]
    runs = {}
    for experiment, extra in (("stacked", ["--stack-seeds"]), ("alone", [])):
        done = subprocess.run([sys.executable, "-m", "optimstudy", "run", *common, "--experiment", experiment,
                               *extra], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "not stacked" not in done.stderr
        runs[experiment] = [run["run_id"] for run in json.loads(done.stdout.splitlines()[-1])["runs"]]
    client = MlflowClient(tracking_uri)
    for stacked_id, alone_id in zip(runs["stacked"], runs["alone"], strict=True):
        stacked, alone = client.get_run(stacked_id), client.get_run(alone_id)
        assert stacked.info.status == alone.info.status == "FINISHED"
        assert stacked.data.params == alone.data.params
        assert stacked.data.tags[TAG_STACKED] == "0,1,2" and TAG_STACKED not in alone.data.tags
        assert stacked.data.metrics.keys() == alone.data.metrics.keys()
        for name, value in alone.data.metrics.items():
            if name not in TIMES:
                close(stacked.data.metrics[name], value, name)
        for name in ("train_loss", "grad_norm", "update_norm", "val_loss"):
            curve = [(m.step, m.value) for m in client.get_metric_history(stacked_id, name)]
            reference = [(m.step, m.value) for m in client.get_metric_history(alone_id, name)]
            assert [step for step, _ in curve] == [step for step, _ in reference], name
            for (step, x), (_, y) in zip(curve, reference):
                close(x, y, (name, step))


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,x"], "--seeds must list distinct seeds"),
    (["--seeds", "1,1"], "--seeds must list distinct seeds"),
    (["--stack-seeds"], "--stack-seeds needs several seeds: --seeds"),
    (["--seed", "3", "--seeds", "0,1"], "give --seed 3 or --seeds 0,1, not both"),
    (["--seeds", "0,1", "--stack-seeds", "--max-stack", "0"], "--max-stack must be a positive integer"),
])
def test_bad_seed_flags_exit_2_naming_the_flag(argv, message, capsys):
    assert main(["run", "--problem", "linreg", "--steps", "2", "--no-track", *argv]) == 2
    assert message in capsys.readouterr().err


SWEEP = """
name = "{name}"
problem = "linreg"
steps = 40
seeds = [0, 1, 2]
stack_seeds = {stack}
max_stack = 2

[optimizers.adam]
lr = [0.003, 0.03]

[[runs]]
optimizer = "sgd"
lr = 0.1
clip_grad_norm = 1.0
"""


@pytest.mark.slow
def test_a_sweep_stacks_the_seeds_of_each_configuration_into_the_same_trials(tmp_path):
    """stack_seeds = true: a worker claims up to max_stack queued seeds of one configuration and trains
    them stacked; each is still its own trial with its own value and its own MLflow run, with the
    numbers the same configuration has alone; clip_grad_norm's seeds run one after another, saying why."""
    import optuna
    from mlflow import MlflowClient

    from optimstudy.sweep.trials import trial_config

    spec = tmp_path / "stacked.toml"
    spec.write_text(SWEEP.format(name="stacked", stack="true"))
    done = subprocess.run([sys.executable, "-m", "optimstudy", "sweep", str(spec), "--json"], cwd=tmp_path,
                          env={**os.environ, "OPTIMSTUDY_SYSTEM_METRICS_S": "0"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["trials"] == {"complete": 9, "pruned": 0, "failed": 0, "skipped": 0}
    assert done.stderr.count("not stacked: clip_grad_norm") == 1  # sgd's 3 seeds: a pair, then one alone
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "mlruns" / "optuna" / "stacked.journal")))
    client = MlflowClient(summary["tracking_uri"])
    stacks = []
    for trial in optuna.load_study(study_name="stacked", storage=storage).trials:
        alone = train(trial_config(trial))
        close(trial.value, alone.final["val_loss"], trial.number)
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["optimstudy.trial"] == str(trial.number)
        stacks.append(run.data.tags.get(TAG_STACKED))
        for name, value in alone.final.items():
            if value is not None:
                close(run.data.metrics[f"final_{name}"], value, (trial.number, name))
        points = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
        curve = [m.value for m in points]
        for x, y in zip(curve, alone.step_metrics["train_loss"], strict=True):
            close(x, y, (trial.number, "train_loss"))
    # adam's 3 seeds per lr: a stack of 2 (max_stack) and one alone; sgd's runs never stacked
    assert sorted(s for s in stacks if s) == ["0,1", "0,1", "0,1", "0,1"] and stacks.count(None) == 5


@pytest.mark.parametrize("line, message", [
    ('stack_seeds = "yes"', "stack_seeds"), ("max_stack = 0", "max_stack"), ("max_stack = 2.5", "max_stack")])
def test_bad_stacking_keys_in_a_spec_exit_2_naming_the_key(line, message, tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    key = line.split(" = ")[0]
    body = SWEEP.format(name="bad", stack="true")
    spec.write_text("\n".join(line if text.startswith(key + " =") else text for text in body.splitlines()))
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and ("true or false" in err or "a positive integer" in err), err


@pytest.mark.slow
def test_ctrl_c_during_a_stacked_sweep_then_resume_completes_everything_once(tmp_path, request):
    """Each seed of an interrupted stack is a trial interrupted as any other: FAIL (queued again on
    resume) and its run KILLED; the resumed sweep runs every configuration once, and check agrees."""
    import contextlib
    import signal
    import sqlite3
    import time

    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    spec = tmp_path / "interrupt.toml"
    # two stacks of 4 seeds, 3000 steps each (seconds on 2 busy cores): the signal comes as soon as the first
    # stack has logged steps, long before it ends
    spec.write_text('name = "interrupt"\nproblem = "linreg"\nsteps = 3000\nseeds = [0, 1, 2, 3]\nstack_seeds = true\n'
                    '[optimizers.sgd]\nlr = [0.01, 0.1]\n')
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"

    def trials():
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(tmp_path / "mlruns" / "optuna" / "interrupt.journal")))
        return optuna.load_study(study_name="interrupt", storage=storage).trials

    def stack_is_training():
        """All 4 seeds' trial runs RUNNING with steps logged, in their first half: read straight from SQLite,
        a look of milliseconds (as tests/sweep/test_reliability.py's first_running_trial_with_steps), not a
        load of the Optuna study and a new MLflow client every 0.2 s."""
        database = tmp_path / "mlruns" / "mlflow.db"
        if not database.exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as connection:
                return connection.execute(
                    "SELECT COUNT(*) FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                    "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'optimstudy.kind' AND t.value = 'trial' "
                    "JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = 'train_loss' "
                    "WHERE e.name = 'interrupt' AND r.status = 'RUNNING' AND m.step < 1500").fetchone()[0] == 4
        except sqlite3.Error:  # the store is being made
            return False

    command = [sys.executable, "-m", "optimstudy", "sweep", str(spec)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request.addfinalizer(process.kill)
    deadline, training = time.time() + 180, False
    while not training and time.time() < deadline:
        training = stack_is_training() or time.sleep(0.2)
    assert training, "no stack of 4 seeds started training"  # the signal follows this look by milliseconds
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "resume" in err, (process.returncode, err[-3000:])
    interrupted = [t for t in trials() if t.state == TrialState.FAIL]
    assert len(interrupted) == 4 and TrialState.RUNNING not in [t.state for t in trials()]
    client = MlflowClient(uri)
    assert {client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in interrupted} == {"KILLED"}

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    complete = [t for t in trials() if t.state == TrialState.COMPLETE]
    keys = [t.user_attrs["optimstudy.key"] for t in complete]
    assert len(keys) == len(set(keys)) == 8
    # `optimstudy check` in this process: it only reads and repairs the stores (a new one costs ~5 s to start)
    checked = in_process("check", spec, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
