"""A sweep's parent run, its notes and its report (tracking/parent_runs.py): written straight into
MLflow's tables and artifact folder where the store allows it, and exactly as MLflow's own client
writes them. Each write is made both ways on one real SQLite store (the other way forced by having
no direct writes for it) and every row and file compared."""
import sqlite3

import pytest
from mlflow import MlflowClient

from optimstudy.tracking import parent_runs
from optimstudy.tracking.client import direct_writes
from optimstudy.tracking.writer import _Store

TAGS = {"optimstudy.kind": "sweep", "optimstudy.study": "s", "mlflow.note.content": "a description " * 700}
PARAMS = {"spec": "s.toml", "mode": "grid", "seeds": "0,1", "confirm_seeds": 5, "note": None}


def rows(database, run_id) -> dict:
    with sqlite3.connect(database) as connection:
        def table(sql):
            return sorted(connection.execute(sql, (run_id,)).fetchall(), key=repr)
        return {"tags": table("SELECT key, value FROM tags WHERE run_uuid=? AND key != 'mlflow.runName'"),
                "params": table("SELECT key, value FROM params WHERE run_uuid=?"),
                "metrics": table("SELECT key, value, step, is_nan FROM metrics WHERE run_uuid=?"),
                "latest": table("SELECT key, value, step, is_nan FROM latest_metrics WHERE run_uuid=?"),
                "run": table("SELECT name, source_type, user_id, status, lifecycle_stage, end_time IS NULL, "
                             "replace(artifact_uri, run_uuid, 'ID') FROM runs WHERE run_uuid=?")}


def files(client, run_id, path=None) -> dict:
    found = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found.update(files(client, run_id, item.path))
        else:
            found[item.path] = open(client.download_artifacts(run_id, item.path), "rb").read()
    return found


@pytest.fixture
def opened(tmp_path, monkeypatch):
    """A store opened by a writer (as a sweep's is), and a way to write through MLflow's client only."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    _Store(uri).open()
    direct_writes.cache_clear()
    assert direct_writes(uri) is not None

    def through_mlflow():
        monkeypatch.setattr(parent_runs, "direct_writes", lambda _: None)
    yield uri, through_mlflow
    direct_writes.cache_clear()


def lifetime(uri, folder):
    """What a sweep does with its parent run, from its creation to its report."""
    run_id = parent_runs.create_parent_run(uri, "s", "sweep s", TAGS, PARAMS, {"spec.toml": "name = 's'\n"})
    assert parent_runs.update_run(uri, run_id, tags={"optimstudy.pid": 1}, texts={"spec.toml": "name = 's' # 2\n"},
                                  status="FINISHED")
    assert parent_runs.update_run(uri, run_id, tags={"optimstudy.pid": 2, "host": "h"}, status="RUNNING")
    assert parent_runs.update_run(uri, run_id, metrics={"trials_complete": 4, "trials_failed": 0},
                                  tags={"optimstudy.edge_warnings": "[]"})
    assert parent_runs.update_run(uri, run_id, metrics={"trials_complete": 6}, status="KILLED")
    parent_runs.set_notes(uri, run_id, "the run's **note**", "s", "the experiment's note")
    assert parent_runs.log_report(uri, [run_id], folder) == 1
    return run_id


def test_a_parent_run_written_directly_is_what_mlflows_client_writes(opened, tmp_path):
    uri, through_mlflow = opened
    database = uri[len("sqlite:///"):]
    folder = tmp_path / "analysis"
    (folder / "figures").mkdir(parents=True)
    for name, text in {"figures/lr.png": "png", "figures/curves.svg": "svg", "report.html": "<h1>",
                       "summary.csv": "a,b\n"}.items():
        (folder / name).write_text(text)

    ours = lifetime(uri, folder)
    through_mlflow()
    theirs = lifetime(uri, folder)
    assert rows(database, ours) == rows(database, theirs)
    client = MlflowClient(uri)
    assert files(client, ours) == files(client, theirs) and len(files(client, ours)) == 5
    run = client.get_run(ours)
    assert run.info.status == "KILLED" and run.data.metrics == {"trials_complete": 6.0, "trials_failed": 0.0}
    assert len(run.data.tags["mlflow.note.content"]) == len("the run's **note**")
    assert client.get_experiment_by_name("s").tags["mlflow.note.content"] == "the experiment's note"


def test_a_run_that_is_gone_is_said_a_deleted_one_refused_and_a_users_experiment_note_kept(opened):
    uri, _ = opened
    assert not parent_runs.update_run(uri, "0" * 32, status="FINISHED")
    run_id = parent_runs.create_parent_run(uri, "s", "sweep s", TAGS, PARAMS, {})
    client = MlflowClient(uri)
    client.set_experiment_tag(client.get_experiment_by_name("s").experiment_id, "mlflow.note.content", "mine")
    parent_runs.set_notes(uri, run_id, "run note", "s", "optimstudy's note")
    tags = client.get_experiment_by_name("s").tags
    assert tags["mlflow.note.content"] == "mine" and tags["optimstudy.description"] == "optimstudy's note"
    client.delete_run(run_id)  # not written directly: MLflow's client says why
    with pytest.raises(Exception, match="must be in the 'active' state"):
        parent_runs.update_run(uri, run_id, status="FINISHED")
