"""One run, tracked or not: load data, open the run, train, close it with the right status.

`optimstudy run` and every sweep trial go through `execute`, so both record runs the same way.
"""
import contextlib
import functools
import getpass
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import torch

from optimstudy import __version__
from optimstudy.errors import UsageError
from optimstudy.problems.data import Data
from optimstudy.problems.losses import LOSSES
from optimstudy.problems.registry import resolve_problem
from optimstudy.run.config import RunConfig
from optimstudy.run.devices import device_label
from optimstudy.run.stacked import Stack, prepare_stack, train_stack
from optimstudy.run.stacked import max_stack as max_stack_for
from optimstudy.run.training import History, train
from optimstudy.run.training import load_data as _load_data
from optimstudy.tag_names import (
    TAG_BATCH_NOTE,
    TAG_DEFAULT_LOSS,
    TAG_ERROR,
    TAG_HAS_OPTIMUM,
    TAG_QUADRATIC,
    TAG_STACKED,
    TAG_TARGET,
    TAG_TASK,
    TAG_VERSION,
)
from optimstudy.tracking.client import artifact_location
from optimstudy.tracking.mlflow_logger import MlflowLogger, run_end, tracked_run
from optimstudy.tracking.writer_handle import WriterDied, start_writer


@dataclass(frozen=True)
class Tracking:
    """Where the runs go and what each carries: the store, the experiment, the parent run and the tags
    of every run, and whether a run keeps its trained weights (state_dict.pt) as an artifact."""
    tracking_uri: str
    experiment: str
    experiment_id: str | None = None  # when known (a sweep worker looks it up once, not per trial)
    parent_run_id: str | None = None
    tags: dict = field(default_factory=dict)
    save_model: bool = False

    def with_experiment_id(self) -> "Tracking":
        """This, with the experiment's id looked up (by the writer) once for the runs that follow, not once
        per run (each lookup waits for the writer)."""
        if self.experiment_id is not None:
            return self
        writer = start_writer(self.tracking_uri)
        return replace(self, experiment_id=writer.experiment(
            self.experiment, artifact_location(self.tracking_uri, self.experiment)))


def load_data(config: RunConfig, data_dir: str | None = None) -> Data:
    """The data of `config`'s problem on its device (read once per process); resolve `config` first."""
    return _load_data(config, data_dir=data_dir)


def check_model(config: RunConfig, data: Data) -> None:
    """Build `config`'s model and put two training rows through it and its loss: a model that is not
    an nn.Module, that cannot take the data's shape, or whose outputs do not fit the labels and the
    loss is a UsageError here, before any run is created, not a FAILED run. Milliseconds; resolve
    `config` first. One call per distinct (problem, loss) is enough."""
    problem = resolve_problem(config.problem)
    factory = problem.make_model
    model_name = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"
    where = f"problem '{config.problem}': model {model_name}"
    try:
        model = problem.build_model(data.info)
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001  the user's code: said as theirs, with its own words
        raise UsageError(f"{where} could not be built: {type(error).__name__}: {error}") from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{where} returned a {type(model).__name__}, not a torch.nn.Module; expected make_model(data) "
                         "-> nn.Module (e.g. nn.Sequential(...)), or an nn.Module class")
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise UsageError(f"{where} has no trainable parameters (none, or all with requires_grad=False): an "
                         "optimizer would have nothing to update; expected a model with at least one nn.Parameter "
                         "(e.g. an nn.Linear)")
    x, y, info = data.train.x[:2], data.train.y[:2], data.info
    example = tuple(x.shape[1:])
    try:
        with torch.no_grad():
            output = model.to(x.device)(x)
    except Exception as error:  # noqa: BLE001  the user's model: said as theirs
        raise UsageError(f"{where} cannot take the data: inputs of shape {example} per example gave "
                         f"{type(error).__name__}: {error}; expected a model that takes {example} (DataInfo."
                         f"input_shape, input_size {info.input_size}: build it from the DataInfo that make_model(data) "
                         "receives)") from None
    n = len(x)
    if problem.task == "classification":
        expected, fits = f"({n}, {info.num_classes}): one score for each of the data's {info.num_classes} classes", (
            isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == n
            and output.shape[1] >= (info.num_classes or 0))
    else:
        expected, fits = f"({n}, 1) or ({n},): one {'score' if problem.task == 'binary' else 'value'} per example", (
            isinstance(output, torch.Tensor) and tuple(output.shape) in ((n,), (n, 1)))
    if not fits:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else f"a {type(output).__name__}"
        raise UsageError(f"{where}: {n} examples gave outputs of shape {got}; expected {expected} "
                         f"(a {problem.task} problem: DataInfo.outputs = {info.outputs})")
    try:
        loss = LOSSES[config.loss][0](output, y)
    except Exception as error:  # noqa: BLE001  the loss on the user's outputs: said as theirs
        raise UsageError(f"{where}: loss '{config.loss}' fails on outputs {tuple(output.shape)} and labels "
                         f"{tuple(y.shape)} {y.dtype}: {type(error).__name__}: {error}") from None
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise UsageError(f"{where}: loss '{config.loss}' gave {getattr(loss, 'shape', loss)!r}, expected one number")


def environment_tags(device: str) -> dict:
    tags = {
        TAG_VERSION: __version__,
        "torch.version": torch.__version__,
        "mlflow.version": _mlflow_version(),
        "device.name": device_label(device),
        "host": socket.gethostname(),
        "python.version": platform.python_version(),
        "mlflow.user": getpass.getuser(),
    }
    commit, dirty = git_state()
    if commit:
        tags.update({"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": dirty})
    return tags


@functools.lru_cache(maxsize=1)  # importlib.metadata reads the installed files: ~3 ms a call
def _mlflow_version() -> str:
    return version("mlflow")


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool]:
    """(commit, uncommitted changes?) of the project's checkout; (None, False) when installed."""
    source = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "-C", source, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return head.stdout.strip() or None, bool(status.stdout.strip())


def problem_tags(problem, data) -> dict:
    """The problem's tags (tag_names.TAG_TASK...) for one run (called where the run is created, so
    torch is already there)."""
    tags = {TAG_TASK: problem.task, TAG_DEFAULT_LOSS: problem.default_loss,
            TAG_HAS_OPTIMUM: str(bool(problem.has_optimum))}
    if problem.target:
        tags[TAG_TARGET] = json.dumps([problem.target[0], float(problem.target[1])])
    x = data.train.x
    if problem.traces_weights and x.dim() == 2 and x.shape[1] == 2:
        x, y = x.double().cpu(), data.train.y.double().cpu().reshape(-1)
        tags[TAG_QUADRATIC] = json.dumps({"a": (x.T @ x / len(y)).tolist(), "b": (x.T @ y / len(y)).tolist(),
                                          "c": float(y @ y / len(y))})
    return tags


def run_name(config: RunConfig) -> str:
    extras = "" if config.zero_grad else " no-zero-grad"
    extras += f" acc{config.accumulate}" if config.accumulate > 1 else ""
    return f"{config.problem} {config.optimizer} lr={config.lr:g} seed={config.seed}{extras}"


def execute(config: RunConfig, tracking: Tracking | None, *, data: Data | None = None, data_dir=None,
            on_eval=None, progress=None, on_start=None, watchdog=None) -> tuple[History, str | None]:
    """Train `config` (resolved first); returns the history and the MLflow run id (None untracked).

    `watchdog` (processes.Watchdog, entered by the caller): each step beats it, so a limit raises
    TrialTimeout at a step boundary; if it has to end the process, it ends this run FAILED first.

    `on_start(run_id)` is called with the run's id before training starts. On a SQL store the
    writer process stores the run meanwhile (tracking.mlflow_logger.MlflowLogger): before any of its points,
    but perhaps a few milliseconds after this call.
    """
    if watchdog is not None:
        watchdog.begin()
    config = config.resolved()
    data = data or load_data(config, data_dir)
    config, note = config.fitted(len(data.train))  # params record the batch that runs (full-batch: the split)
    if watchdog is not None:
        progress = watchdog.progress(progress)
    if tracking is None:
        history = train(config, data=data, on_eval=on_eval, progress=progress)
        history.note = note or history.note
        return history, None

    logger = open_logger(config, data, note, tracking)
    if watchdog is not None:  # the training thread is stuck: the watchdog's thread ends the run, with why
        watchdog.on_stuck.append(lambda reason: logger.close("FAILED", {TAG_ERROR: f"TrialTimeout: {reason}"}))
    with tracked_run(logger):
        if on_start is not None:
            on_start(logger.run_id)
        history = train(config, logger, data=data, on_eval=on_eval, progress=progress)
        history.note = note or history.note
        if tracking.save_model:
            _save_state_dict(logger, history.model)
    return history, logger.run_id


def open_logger(config: RunConfig, data: Data, note: str, tracking: Tracking, tags=None) -> MlflowLogger:
    """The MLflow run of one resolved, fitted config, with its params, the tags of every run (tracking.tags)
    and its own (`tags`), and its data set."""
    # problem_tags: what the report needs about the problem, so that it never imports torch
    run_tags = {**environment_tags(config.device), **problem_tags(resolve_problem(config.problem), data),
                "dataset": data.name,
                **{f"dataset.{split}": size for split, size in data.sizes().items()}, **tracking.tags, **(tags or {})}
    if note:
        run_tags[TAG_BATCH_NOTE] = note
    dataset = {"name": data.name, "digest": data.digest, "source_type": data.source_type, "source": data.source,
               "profile": {"shapes": data.shapes(), "classes": data.info.num_classes, "problem": config.problem}}
    return MlflowLogger(tracking.tracking_uri, tracking.experiment, config.params(), run_tags,
                        run_name=run_name(config), parent_run_id=tracking.parent_run_id,
                        known_experiment_id=tracking.experiment_id, dataset=dataset)


def execute_seeds(configs: list[RunConfig], tracking: Tracking | None, *, stack: bool = True,
                  max_stack: int | None = None, data_dir=None, progress=None,
                  say=None) -> list[tuple[History, str | None]]:
    """Train the seeds of one configuration (configs that differ only in seed): stacked in groups of
    at most `max_stack` (run.stacked; None: its MAX_STACK for the device) where `stack` and the
    mathematics allow, else one after another through `execute`. Each seed is its own MLflow run;
    a stacked one carries the tag tag_names.TAG_STACKED. `say(line)` hears why seeds were not stacked.
    Returns (history, run id) per config, in order."""
    configs = [c.resolved() for c in configs]
    tracking = tracking and tracking.with_experiment_id()
    if not stack or len(configs) < 2:
        return [execute(c, tracking, data_dir=data_dir, progress=progress) for c in configs]
    size = max_stack or max_stack_for(configs[0].device)
    results = []
    for start in range(0, len(configs), size):
        group = configs[start:start + size]
        prepared = prepare_stack(group, data_dir=data_dir) if len(group) > 1 else None  # one seed: nothing to stack
        if not isinstance(prepared, Stack):
            if say is not None and prepared is not None:
                seeds = ",".join(str(c.seed) for c in group)
                say(f"seeds {seeds} run one after another, not stacked: {prepared}")
            results += [execute(c, tracking, data_dir=data_dir, progress=progress) for c in group]
        else:
            results += execute_stack(prepared, tracking, progress=progress)
    return results


def execute_stack(stack: Stack, tracking: Tracking | None, *, seed_tags=None, on_evals=None,
                  on_starts=None, progress=None) -> list[tuple[History, str | None]]:
    """`execute` for a prepared stack of seeds (run.stacked.prepare_stack): (history, run id) per seed.
    `seed_tags`, `on_evals`, `on_starts`: one dict of tags (added to tracking.tags), one callable (or
    None) per seed, as `execute`'s. A seed whose on_eval raised errors.Stop ends KILLED, the others FINISHED.

    The seeds' runs are created, logged and ended together (writer_handle's `together`): the writer
    stores each of those steps for every seed in one transaction, not one per seed."""
    if tracking is None:
        histories = train_stack(stack, on_evals=on_evals, progress=progress)
        return [(history, None) for history in histories]
    tracking = tracking.with_experiment_id()
    writer = start_writer(tracking.tracking_uri)
    each_tags = seed_tags or [None] * len(stack.configs)
    stacked = {TAG_STACKED: ",".join(str(seed) for seed in stack.seeds)}
    with writer.together():
        loggers = [open_logger(c, data, note, tracking, {**(tags or {}), **stacked})
                   for c, data, note, tags in zip(stack.configs, stack.datas, stack.notes, each_tags)]
    runs = [tracked_run(logger) for logger in loggers]  # each ended as execute ends its one run
    entered = []
    try:
        for run in runs:
            run.__enter__()
            entered.append(run)
        for logger, on_start in zip(loggers, on_starts or [None] * len(loggers)):
            if on_start is not None:
                on_start(logger.run_id)
        histories = train_stack(stack, loggers, on_evals=on_evals, progress=progress, together=writer.together)
        if tracking.save_model:
            for logger, history in zip(loggers, histories):
                _save_state_dict(logger, history.model)
    except BaseException:
        failure = sys.exc_info()
        for run in entered:  # FAILED, or KILLED on Ctrl-C: every run is ended, and what stopped the stack
            with contextlib.suppress(Exception):  # (a Ctrl-C above all) is what is raised, not a close's error
                run.__exit__(*failure)
        raise
    # every seed's last points and end in one frame, then each run is closed as alone, waiting for its end's
    # answer; a writer that died meanwhile is met again by each close, which ends its run as alone
    with contextlib.suppress(WriterDied), writer.together():
        for seed, logger in enumerate(loggers):
            logger.end_ahead(*run_end(stack.stopped.get(seed)))
    failures = []
    for seed, run in enumerate(runs):
        stopped = stack.stopped.get(seed)
        try:
            if stopped is None:
                run.__exit__(None, None, None)
            else:  # a pruned seed ends KILLED, as a pruned separate run does
                try:
                    run.__exit__(type(stopped), stopped, stopped.__traceback__)
                except type(stopped):
                    pass
        except Exception as error:  # noqa: BLE001  the writer died, the store refused: every other seed's run still ends
            failures.append(error)
    if failures:
        raise failures[0]
    return [(history, logger.run_id) for history, logger in zip(histories, loggers)]


def _save_state_dict(logger, model) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "state_dict.pt")
        torch.save(model.state_dict(), path)
        logger.log_artifact(path)
