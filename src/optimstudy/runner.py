"""One run, tracked or not: load data, open the run, train, close it with the right status.

`optimstudy run` and every sweep trial go through `execute`, so both record runs the same way.
"""
import os
import tempfile
from dataclasses import dataclass

from optimstudy.config import RunConfig
from optimstudy.data import Data
from optimstudy.training import History, train
from optimstudy.training import load_data as _load_data


@dataclass(frozen=True)
class Tracking:
    tracking_uri: str
    experiment: str
    experiment_id: str | None = None  # when known (a sweep worker looks it up once, not per trial)


def load_data(config: RunConfig, data_dir: str | None = None) -> Data:
    """The data of `config`'s problem on its device (read once per process); resolve `config` first."""
    return _load_data(config, data_dir=data_dir)


def run_name(config: RunConfig) -> str:
    extras = "" if config.zero_grad else " no-zero-grad"
    extras += f" acc{config.accumulate}" if config.accumulate > 1 else ""
    return f"{config.problem} {config.optimizer} lr={config.lr:g} seed={config.seed}{extras}"


def execute(config: RunConfig, tracking: Tracking | None, *, data: Data | None = None, data_dir=None,
            parent_run_id=None, tags=None, on_eval=None, progress=None, save_model=False,
            on_start=None) -> tuple[History, str | None]:
    """Train `config` (resolved first); returns the history and the MLflow run id (None untracked).

    `on_start(run_id)` is called with the run's id before training starts. On a SQL store the
    writer process stores the run meanwhile (tracking.MlflowLogger): before any of its points,
    but perhaps a few milliseconds after this call.
    """
    config = config.resolved()
    data = data or load_data(config, data_dir)
    config, note = config.fitted(len(data.train))  # params record the batch that runs (full-batch: the split)
    if tracking is None:
        history = train(config, data=data, on_eval=on_eval, progress=progress)
        history.note = note or history.note
        return history, None

    from optimstudy.problem_facts import problem_tags
    from optimstudy.problems import resolve_problem
    from optimstudy.tracking import MlflowLogger, environment_tags, tracked_run

    # problem_tags: what the report needs about the problem, so that it never imports torch
    run_tags = {**environment_tags(config.device), **problem_tags(resolve_problem(config.problem), data),
                "dataset": data.name,
                **{f"dataset.{split}": size for split, size in data.sizes().items()}, **(tags or {})}
    if note:
        run_tags["optimstudy.batch_note"] = note
    dataset = {"name": data.name, "digest": data.digest, "source_type": data.source_type, "source": data.source,
               "profile": {"shapes": data.shapes(), "classes": data.info.num_classes, "problem": config.problem}}
    logger = MlflowLogger(tracking.tracking_uri, tracking.experiment, config.params(), run_tags,
                          run_name=run_name(config), parent_run_id=parent_run_id,
                          known_experiment_id=tracking.experiment_id, dataset=dataset)
    with tracked_run(logger):
        if on_start is not None:
            on_start(logger.run_id)
        history = train(config, logger, data=data, on_eval=on_eval, progress=progress)
        history.note = note or history.note
        if save_model:
            _save_state_dict(logger, history.model)
    return history, logger.run_id


def _save_state_dict(logger, model) -> None:
    import torch

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "state_dict.pt")
        torch.save(model.state_dict(), path)
        logger.log_artifact(path)
