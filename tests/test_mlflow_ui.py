"""What a user sees in the MLflow UI: experiments open on their runs, the sweep says what won.

MLflow 3 opens an experiment as a GenAI experiment (traces, token usage) unless its
`mlflow.experimentKind` tag says it holds model training; these tests read the tags through
MlflowClient, as the UI does.
"""
from mlflow import MlflowClient

from optimstudy.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, experiment_id


def test_a_tracked_run_marks_its_experiment_as_model_training(cli, tmp_path, tracking_uri):
    cli("run", "--problem", "linreg", "--steps", "20", "--experiment", "kinds", "--tracking-uri", tracking_uri,
        cwd=tmp_path, check_exit=0)
    experiment = MlflowClient(tracking_uri).get_experiment_by_name("kinds")
    assert experiment.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING


def test_an_existing_experiment_without_the_kind_gets_it_when_touched_again(tmp_path, tracking_uri):
    from optimstudy.tracking import ensure_store

    ensure_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    created = client.create_experiment("older", artifact_location=(tmp_path / "artifacts").as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(created).tags
    assert experiment_id(tracking_uri, "older") == created
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
