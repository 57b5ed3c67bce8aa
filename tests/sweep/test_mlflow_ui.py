"""What a user sees in the MLflow UI: experiments open on their runs, the sweep says what won.

MLflow 3 opens an experiment as a GenAI experiment (traces, token usage) unless its
`mlflow.experimentKind` tag says it holds model training; these tests read the tags through
MlflowClient, as the UI does.
"""
from pathlib import Path

import pytest
from helpers import in_process, once_per_session, run_cli
from mlflow import MlflowClient

from optimstudy.tracking.client import experiment_id
from optimstudy.tracking.writer import EXPERIMENT_KIND_TAG, MODEL_TRAINING


def store_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


def run_in_known(folder: Path) -> None:
    run_cli("run", "--problem", "linreg", "--steps", "20", "--experiment", "known", "--tracking-uri",
            store_uri(folder), cwd=folder, check_exit=0)


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> str:
    """A store holding one tracked run, in experiment 'known' (read only: the tests only look)."""
    return store_uri(once_per_session(tmp_path_factory, "shared-one-tracked-run", run_in_known))


def test_a_tracked_run_marks_its_experiment_as_model_training(one_run):
    experiment = MlflowClient(one_run).get_experiment_by_name("known")
    assert experiment.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING


def test_an_existing_experiment_without_the_kind_gets_it_when_touched_again(tmp_path, tracking_uri):
    from optimstudy.tracking.client import ensure_store

    ensure_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    created = client.create_experiment("older", artifact_location=(tmp_path / "artifacts").as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(created).tags
    assert experiment_id(tracking_uri, "older") == created
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING


def test_ui_with_an_unknown_experiment_exits_2_naming_the_known_ones(cli, tmp_path, one_run):
    result = cli("ui", "--experiment", "knwn", "--tracking-uri", one_run, "--port", "5998", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "knwn" in result.stderr and "did you mean 'known'" in result.stderr


def test_the_sweep_parent_run_describes_the_results_and_the_experiment_the_spec(tmp_path, tracking_uri):
    """The UI's run description shows the results layer's best configurations, the same ones
    the sweep's --json reports; the experiment's description is the spec's."""
    import json

    from optimstudy.tag_names import NOTE_TAG

    spec = tmp_path / "noted.toml"
    spec.write_text('name = "noted"\ndescription = "SGD against Adam on linreg."\nproblem = "linreg"\n'
                    'steps = 40\nseeds = [0, 1]\n[optimizers.sgd]\nlr = [0.01, 0.1]\n'
                    '[optimizers.adam]\nlr = [0.01, 0.1]\n')
    result = in_process("sweep", spec, "--json", "--tracking-uri", tracking_uri, cwd=tmp_path)  # its subject: notes
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    client = MlflowClient(tracking_uri)
    note = client.get_run(summary["parent_run_id"]).data.tags[NOTE_TAG]
    assert "SGD against Adam on linreg." in note
    for best in summary["best"]:
        assert f"| {best['problem']} | {best['optimizer']} | {best['lr']:.3g} |" in note
    assert "optimstudy report --experiment noted" in note
    experiment = client.get_experiment_by_name("noted")
    assert experiment.tags[NOTE_TAG] == "SGD against Adam on linreg."
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    assert {(v["a"], v["b"]) for v in summary["verdicts"]} == {("adam", "sgd")}


def sweep_here(spec, tracking_uri, cwd) -> None:
    """`sweep` for a test about the tags a sweep writes, not about its process: run by this process (a new
    interpreter costs ~5 s of imports on 2 busy cores). A sweep process of its own:
    test_the_sweep_parent_run_describes_the_results_and_the_experiment_the_spec."""
    result = in_process("sweep", spec, "--tracking-uri", tracking_uri, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_a_description_the_user_wrote_on_the_experiment_survives_the_next_sweep(tmp_path, tracking_uri):
    from optimstudy.tag_names import NOTE_TAG
    from optimstudy.tag_names import TAG_DESCRIPTION as OWN_NOTE_TAG

    spec = tmp_path / "described.toml"
    spec.write_text('name = "described"\ndescription = "From the spec."\nproblem = "linreg"\nsteps = 20\n'
                    'seeds = [0]\n[optimizers.sgd]\nlr = [0.1]\n')
    sweep_here(spec, tracking_uri, tmp_path)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("described")
    assert experiment.tags[NOTE_TAG] == "From the spec."  # empty before: optimstudy's text shows
    # what an edit of the description in MLflow's UI writes
    client.set_experiment_tag(experiment.experiment_id, NOTE_TAG, "My notes: rerun after the data fix.")
    spec.write_text(spec.read_text().replace("From the spec.", "The spec, reworded."))
    sweep_here(spec, tracking_uri, tmp_path)
    tags = client.get_experiment_by_name("described").tags
    assert tags[NOTE_TAG] == "My notes: rerun after the data fix."
    assert tags[OWN_NOTE_TAG] == "The spec, reworded."  # optimstudy's own text, in its own tag
