"""A sweep's parent run in MLflow, and the report attached to it (trial runs go through
tracking.mlflow_logger.MlflowLogger).

    run_id = create_parent_run(uri, "quickstart", "sweep quickstart", tags, params, {"spec.toml": text})
    update_run(uri, run_id, tags={TAG_EDGE_WARNINGS: "[]"}, status="FINISHED")
    set_notes(uri, run_id, "## quickstart ...", "quickstart")
"""
import errno
import sys
import time
from pathlib import Path

from optimstudy.tag_names import NOTE_TAG, TAG_DESCRIPTION
from optimstudy.tracking.client import experiment_id, mlflow_client, once_more_if_raced, param_text
from optimstudy.tracking.connectivity import hide_passwords

# how a store that takes no writes says so: SQLite, the file system (EROFS, EACCES), an MLflow server
READ_ONLY_SIGNS = ("readonly database", "read-only file system", "permission denied", "errno 30", "errno 13")


def is_read_only(error: BaseException) -> bool:
    """Whether `error` says the tracking store (its database or its artifact folder) takes no writes."""
    if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return True
    return any(sign in str(error).lower() for sign in READ_ONLY_SIGNS)


def log_report(tracking_uri: str, run_ids, folder) -> int:
    """Attach a report (page, summary.csv, figures/) to each sweep parent run, under 'report/'.
    Returns how many runs got it; a run that cannot take it is warned about, not fatal; a store that
    takes no writes at all raises (is_read_only), said once by the report, not once per run."""
    from mlflow import MlflowClient  # on first use: it imports mlflow
    from mlflow.exceptions import MlflowException  # on first use: it imports mlflow

    client, folder, logged = MlflowClient(tracking_uri), Path(folder), 0
    for run_id in run_ids:
        try:
            client.log_artifacts(run_id, str(folder / "figures"), artifact_path="report/figures")
            for name in ("report.html", "summary.csv"):
                client.log_artifact(run_id, str(folder / name), artifact_path="report")
            logged += 1
        except (MlflowException, OSError) as error:
            if is_read_only(error):
                raise
            print(hide_passwords(f"warning: could not log the report to sweep run {run_id}: {str(error)[:200]}"),
                  file=sys.stderr)
    return logged


def create_parent_run(tracking_uri: str, experiment: str, run_name: str, tags: dict, params: dict,
                      texts: dict) -> str:
    """A sweep's parent run, RUNNING, with its params and texts (artifact path -> text)."""
    from mlflow.entities import Param  # on first use: it imports mlflow

    client = mlflow_client(tracking_uri)
    run = client.create_run(experiment_id(tracking_uri, experiment), tags={k: str(v) for k, v in tags.items()},
                            run_name=run_name)
    client.log_batch(run.info.run_id, params=[Param(k, param_text(v)) for k, v in params.items()])
    for path, text in texts.items():
        client.log_text(run.info.run_id, text, path)
    return run.info.run_id


def update_run(tracking_uri: str, run_id: str, *, tags: dict | None = None, metrics: dict | None = None,
               texts: dict | None = None, status: str | None = None) -> bool:
    """Set tags, log metrics and texts, then set the status (RUNNING reopens an ended run).
    False when the run is gone (the tracking store was replaced)."""
    from mlflow.entities import Metric, RunTag  # on first use: it imports mlflow
    from mlflow.exceptions import MlflowException  # on first use: it imports mlflow

    client = mlflow_client(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    now = int(time.time() * 1000)
    once_more_if_raced(client.log_batch, run_id,
                        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                        tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()])
    for path, text in (texts or {}).items():
        client.log_text(run_id, text, path)
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    elif status:
        client.set_terminated(run_id, status)
    return True


def rename_experiment(tracking_uri: str, name: str, new_name: str) -> bool:
    """Move an experiment (and its runs) out of the way of a study that starts afresh."""
    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        return False
    client.rename_experiment(found.experiment_id, new_name)
    return True


NOTE_MAX_CHARS = 7500  # MLflow keeps tag values up to 8,000 characters


def set_notes(tracking_uri: str, run_id: str | None, run_note: str, experiment: str,
              experiment_note: str | None = None) -> None:
    """The Markdown descriptions the MLflow UI shows: the sweep parent run's and its experiment's.

    The experiment's description is the user's once they have written one (in the UI, or through
    MLflow): optimstudy writes it only while it is empty or still the text optimstudy wrote last;
    its own text is always in the experiment's optimstudy.description tag."""
    client = mlflow_client(tracking_uri)
    if run_id:
        once_more_if_raced(client.set_tag, run_id, NOTE_TAG, _clip(run_note))
    if experiment_note is not None:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            text, shown = _clip(experiment_note), found.tags.get(NOTE_TAG)
            once_more_if_raced(client.set_experiment_tag, found.experiment_id, TAG_DESCRIPTION, text)
            # the note optimstudy last wrote it may replace; a user's own it never does
            if shown is None or shown == found.tags.get(TAG_DESCRIPTION):
                once_more_if_raced(client.set_experiment_tag, found.experiment_id, NOTE_TAG, text)


def _clip(text: str) -> str:
    if len(text) <= NOTE_MAX_CHARS:
        return text
    return text[:NOTE_MAX_CHARS - 60].rsplit("\n", 1)[0] + "\n\n(cut: see `optimstudy report` for the rest)"
