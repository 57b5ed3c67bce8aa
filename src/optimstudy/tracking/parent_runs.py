"""A sweep's parent run in MLflow, and the report attached to it (trial runs go through
tracking.mlflow_logger.MlflowLogger). Written straight into MLflow's tables and artifact folder where
the store allows it (tracking.client.direct_writes: no MLflow import, ~3 s of a sweep's start), else
through MLflow's client.

    run_id = create_parent_run(uri, "quickstart", "sweep quickstart", tags, params, {"spec.toml": text})
    update_run(uri, run_id, tags={TAG_EDGE_WARNINGS: "[]"}, status="FINISHED")
    set_notes(uri, run_id, "## quickstart ...", "quickstart")
"""
import contextlib
import errno
import os
import shutil
import sys
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse
from urllib.request import url2pathname

from optimstudy.compat.mlflow import is_plain_name
from optimstudy.tag_names import NOTE_TAG, TAG_DESCRIPTION
from optimstudy.tracking.client import direct_writes, experiment_id, mlflow_client, once_more_if_raced, param_text
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
    folder, logged, fast = Path(folder), 0, direct_writes(tracking_uri)
    files = [(path, PurePosixPath("report/figures", path.relative_to(folder / "figures").parent.as_posix()))
             for path in sorted((folder / "figures").rglob("*")) if path.is_file()]
    files += [(folder / name, "report") for name in ("report.html", "summary.csv")]
    for run_id in run_ids:
        try:
            local = local_folder(fast.run_artifact_uri(run_id) or "") if fast is not None else None
            if local is None:
                _log_report_through_mlflow(tracking_uri, run_id, folder)
            else:  # what MLflow's local artifact repository does: each file copied in, then renamed into place
                for path, artifact_path in files:
                    copy_in(path, local / artifact_path)
            logged += 1
        except Exception as error:  # MLflow's errors, a file system's: warned about unless read-only
            if is_read_only(error) or not _is_store_error(error):
                raise
            print(hide_passwords(f"warning: could not log the report to sweep run {run_id}: {str(error)[:200]}"),
                  file=sys.stderr)
    return logged


def _is_store_error(error: Exception) -> bool:
    return isinstance(error, OSError) or type(error).__name__ == "MlflowException"


def _log_report_through_mlflow(tracking_uri: str, run_id: str, folder: Path) -> None:
    client = mlflow_client(tracking_uri)
    client.log_artifacts(run_id, str(folder / "figures"), artifact_path="report/figures")
    for name in ("report.html", "summary.csv"):
        client.log_artifact(run_id, str(folder / name), artifact_path="report")


def copy_in(source: Path, folder: Path) -> None:
    """`source` copied into `folder` under its name, its times and mode kept, replacing a file there at once."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{source.name}.{os.getpid()}.partial"
    try:
        shutil.copy2(source, partial)
        os.replace(partial, folder / source.name)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()


def create_parent_run(tracking_uri: str, experiment: str, run_name: str, tags: dict, params: dict,
                      texts: dict) -> str:
    """A sweep's parent run, RUNNING, with its params and texts (artifact path -> text)."""
    tags, params = {k: str(v)[:8000] for k, v in tags.items()}, {k: param_text(v) for k, v in params.items()}
    fast, experiment = direct_writes(tracking_uri), experiment_id(tracking_uri, experiment)
    if fast is not None and all(map(is_plain_name, [*tags, *params])):
        run_id = uuid.uuid4().hex  # what MLflow's own create_run picks
        fast.create_run(run_id, experiment, run_name, tags, params, int(time.time() * 1000))
    else:
        from mlflow.entities import Param  # on first use: it imports mlflow

        client = mlflow_client(tracking_uri)
        run_id = client.create_run(experiment, tags=tags, run_name=run_name).info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    log_texts(tracking_uri, run_id, texts)
    return run_id


def log_texts(tracking_uri: str, run_id: str, texts: dict) -> None:
    """MLflow's log_text for each (artifact path -> text): into the run's artifact folder where it is a
    local one (what MLflow's local artifact repository does), else through MLflow's client."""
    fast = direct_writes(tracking_uri) if texts else None
    folder = local_folder(fast.run_artifact_uri(run_id) or "") if fast is not None else None
    for path, text in texts.items():
        if folder is None:
            mlflow_client(tracking_uri).log_text(run_id, text, path)
            continue
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)


def local_folder(artifact_uri: str) -> Path | None:
    """The folder of a `file:///` artifact URI (MLflow's local_file_uri_to_path); None for any other."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme != "file" or parsed.netloc or parsed.query or parsed.fragment:
        return None
    return Path(url2pathname(parsed.path))


def update_run(tracking_uri: str, run_id: str, *, tags: dict | None = None, metrics: dict | None = None,
               texts: dict | None = None, status: str | None = None) -> bool:
    """Set tags, log metrics and texts, then set the status (RUNNING reopens an ended run).
    False when the run is gone (the tracking store was replaced)."""
    fast = direct_writes(tracking_uri)
    if fast is not None and fast.update_run(run_id, tags or {}, metrics or {}, status):
        log_texts(tracking_uri, run_id, texts or {})
        return True
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
    fast = direct_writes(tracking_uri)
    if fast is not None:
        if run_id and not fast.update_run(run_id, {NOTE_TAG: _clip(run_note)}, {}, None):
            once_more_if_raced(mlflow_client(tracking_uri).set_tag, run_id, NOTE_TAG, _clip(run_note))
        found = fast.find_experiment(experiment) if experiment_note is not None else None
        if found is not None and found[1] == "active":
            experiment_id_, _, tags = found
            text, shown = _clip(experiment_note), tags.get(NOTE_TAG)
            fast.set_experiment_tag(experiment_id_, TAG_DESCRIPTION, text)
            if shown is None or shown == tags.get(TAG_DESCRIPTION):  # as below
                fast.set_experiment_tag(experiment_id_, NOTE_TAG, text)
        return
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
