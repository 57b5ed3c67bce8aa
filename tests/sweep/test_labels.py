"""A spec's optimizer label is part of each trial's identity: two labels never merge into one trial."""
import json
import tomllib
from dataclasses import replace

import optuna
import pytest
from helpers import in_process

from optimstudy import results
from optimstudy.run.config import RunConfig
from optimstudy.sweep.planning import plan
from optimstudy.sweep.queue import Queue, enqueue_missing
from optimstudy.sweep.spec import config_key
from optimstudy.sweep.spec_reader import parse_spec
from optimstudy.tracking.reader import load_runs

ONE_LABEL = """
name = "{name}"
problem = "linreg"
steps = 20
seeds = [0, 1]

[optimizers.sgd_a]
optimizer = "sgd"
lr = [0.01, 0.1]
"""
SECOND_LABEL = """
[optimizers.sgd_b]
optimizer = "sgd"
lr = [0.01, 0.1]
"""


def test_keys_of_configurations_labelled_by_their_optimizer_are_what_studies_stored_before():
    # the key text an earlier version queued for this configuration: a study keyed so resumes as it was
    before = ('{"accumulate": 1, "batch_size": 64, "clip_grad_norm": null, "compile": false, "device": "cpu", '
              '"diverge_factor": 100.0, "epochs": null, "eval_every": null, "loss": null, "lr": 0.05, '
              '"optimizer": "sgd", "problem": "linreg", "schedule": "constant", "schedule_every": null, "seed": 1, '
              '"shuffle": true, "split_seed": 0, "steps": 20, "threads": null, "val_fraction": 0.0625, '
              '"zero_grad": true}')
    config = RunConfig(problem="linreg", optimizer="sgd", lr=0.05, steps=20, seed=1, device="cpu")
    assert "vary" in config.params() and config_key(config, "sgd") == config_key(config) == before
    assert json.loads(config_key(config, "sgd_b"))["label"] == "sgd_b"


def journal_study(tmp_path, name):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.journal")))
    return optuna.create_study(study_name=name, storage=storage), storage


def test_a_study_queued_before_labels_were_keys_resumes_without_queueing_its_trials_again(tmp_path):
    objective = ("val_loss", "minimize")
    for name, text, newly in (("renamed", ONE_LABEL, []), ("twins", ONE_LABEL + SECOND_LABEL, ["sgd_b"] * 4)):
        spec = parse_spec(tomllib.loads(text.format(name=name)))
        planned, _ = plan(spec)
        study, storage = journal_study(tmp_path, name)
        # what the earlier version queued: keys without the label, so sgd_b's trials merged into sgd_a's
        queued_then = enqueue_missing(study, [replace(p, key=config_key(p.config)) for p in planned], objective)
        assert [p.label for p in queued_then] == ["sgd_a"] * 4
        added = enqueue_missing(study, planned, objective)
        assert [p.label for p in added] == newly, name  # sgd_a found as queued; sgd_b's trials queued now
        queue = Queue(spec, storage)
        queue.read()
        assert not queue.twinned and len(queue.waiting) == 4 + len(newly)


def write(folder, text, name="twins"):
    path = folder / f"{name}.toml"
    path.write_text(text.format(name=name))
    return path


def sweep_here(spec, cwd):
    """`sweep SPEC --json` for a test about what a one-worker sweep stores, not about its process: run by
    this process (a new interpreter costs ~5 s of imports on 2 busy cores); its trials train here."""
    result = in_process("sweep", spec, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_labels_of_one_configuration_both_run_and_check_names_a_label_without_runs(tmp_path):
    spec = write(tmp_path, ONE_LABEL)
    sweep_here(spec, tmp_path)  # the first label's runs, as any sweep leaves them
    spec = write(tmp_path, ONE_LABEL + SECOND_LABEL)  # a second label for the same configuration, not yet swept
    result = in_process("check", spec, cwd=tmp_path)  # check only reads the stores: no new process needed
    assert result.returncode == 1 and "label 'sgd_b' of the spec has no finished runs (its trials: none queued)" \
        in result.stdout, result.stdout

    summary = sweep_here(spec, tmp_path)  # the same process: new_trials counts only this sweep's trials
    assert summary["new_trials"] == 4 and summary["trials"]["complete"] == 8
    runs = results.run_table(load_runs(summary["tracking_uri"], experiments=["twins"]))
    assert sorted(runs["label"].value_counts().items()) == [("sgd_a", 4), ("sgd_b", 4)]
    best = results.best_configurations(runs)
    assert sorted(best["optimizer"]) == ["sgd_a", "sgd_b"] and set(best["seeds"]) == {2}
    assert in_process("check", spec, cwd=tmp_path).returncode == 0


# ---- labels follow rules, and what quotes them (CSV, the MLflow note) neutralises them ----------

def label_spec(label: str, in_runs: bool = False) -> str:
    head = 'name = "labels"\nproblem = "linreg"\nsteps = 20\nseeds = [0]\n[optimizers.sgd]\nlr = [0.1]\n'
    if in_runs:
        return head + f'[[runs]]\noptimizer = "sgd"\nlr = 0.01\nlabel = {json.dumps(label)}\n'
    return head + f'[optimizers.{json.dumps(label)}]\noptimizer = "sgd"\nlr = [0.1]\n'


@pytest.mark.parametrize("label", ["a|b", "two\nlines", "tab\there", "x" * 101, "   ", "bell\x07"])
def test_a_label_that_would_break_a_table_is_refused_naming_it_and_the_rule(label):
    from optimstudy.errors import UsageError

    for in_runs in (False, True):
        with pytest.raises(UsageError) as caught:
            parse_spec(tomllib.loads(label_spec(label, in_runs)))
        message = str(caught.value)
        assert "optimizer label " in message and "printable characters" in message and "no '|'" in message
        assert (repr(label) if len(label) <= 60 else repr(label[:40])) in message, message
        assert ("runs[0].label" in message) == in_runs, message


def test_labels_in_any_script_and_formula_like_ones_are_accepted():
    for label in ("Адам-β", "最適化 1", "x" * 100, '=HYPERLINK("http://x","c")', "-lr.scan", "@home:Opt"):
        for in_runs in (False, True):
            spec = parse_spec(tomllib.loads(label_spec(label, in_runs)))
            assert label in [o.label for o in spec.optimizers] + [r.get("label") for r in spec.runs]


@pytest.mark.slow
def test_a_5000_character_label_exits_2_and_writes_nothing(cli, tmp_path):
    (tmp_path / "labels.toml").write_text(label_spec("y" * 5000))
    result = cli("sweep", "labels.toml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "optimizer label 'yyyy" in result.stderr and "(5000 characters)" in result.stderr
    assert len(result.stderr) < 1000 and not (tmp_path / "mlruns").exists()


def test_every_formula_like_text_cell_is_neutralised_and_numbers_stay_numbers(tmp_path):
    import csv

    import pandas as pd

    from optimstudy.report.csv_files import write_csv

    frame = pd.DataFrame({"optimizer": pd.array(['=HYPERLINK("http://x","c")', "+1+cmd", "-2+3", "@SUM(A1)",
                                                 "\tx", "\rx", "sgd", "-1.5", None], dtype="str"),
                          "mean": [-0.5, 1.0, -2.0, 3.0, 4.0, 5.0, 6.0, -7.25, float("nan")],
                          "seeds": [-1, 2, 3, 4, 5, 6, 7, 8, 9],
                          "mixed": ["=1", -3, "-x", None, "a", "b", "c", "d", "e"]})
    with open(write_csv(frame, tmp_path / "t.csv"), newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["optimizer"] for r in rows] == ['\'=HYPERLINK("http://x","c")', "'+1+cmd", "'-2+3", "'@SUM(A1)",
                                              "'\tx", "'\rx", "sgd", "-1.5", ""]
    assert [r["mean"] for r in rows][:3] == ["-0.5", "1.0", "-2.0"] and rows[0]["seeds"] == "-1"
    assert [r["mixed"] for r in rows][:3] == ["'=1", "-3", "'-x"]
    assert list(frame["optimizer"])[0] == '=HYPERLINK("http://x","c")'  # the caller's frame is untouched


@pytest.mark.slow
def test_a_formula_label_reaches_summary_csv_neutralised_and_the_mlflow_note_escaped(cli, tmp_path):
    import csv

    from mlflow import MlflowClient

    from optimstudy.tag_names import NOTE_TAG

    formula, markup = '=HYPERLINK("http://x","c")', "@[x](http://e) <b>`y`"
    text = ('name = "labels"\nproblem = "linreg"\nsteps = 20\nseeds = [0]\n'
            f'[optimizers.{json.dumps(formula)}]\noptimizer = "sgd"\nlr = [0.1]\n'
            f'[optimizers.{json.dumps(markup)}]\noptimizer = "sgd"\nlr = [0.05]\n')
    (tmp_path / "labels.toml").write_text(text)
    summary = json.loads(cli("sweep", "labels.toml", "--json", cwd=tmp_path, check_exit=0).stdout.splitlines()[-1])
    # the report writes summary.csv and the note whatever its figures: one that draws nothing, and in this
    # process (its subject is what it writes; a report process of its own: tests/report/test_report.py)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "nothing.py").write_text('TITLE = "Nothing"\n\n\ndef figure(study):\n'
                                                     '    return "no figure wanted here"\n')
    reported = in_process("report", "--out", "out", "--analysis", "figures", cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-3000:]
    attached = [p for p in (tmp_path / "mlruns").rglob("summary.csv") if "report" in p.parts]
    assert attached, "summary.csv was not attached to the parent run"
    for path in (tmp_path / "out" / "summary.csv", attached[0]):
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        assert sorted(r["optimizer"] for r in rows) == sorted(["'" + formula, "'" + markup]), rows
        assert all(float(r["best_lr"]) > 0 for r in rows)  # numbers are written as numbers
    note = MlflowClient(summary["tracking_uri"]).get_run(summary["parent_run_id"]).data.tags[NOTE_TAG]
    assert "&#91;x&#93;(http://e) &lt;b&gt;&#96;y&#96;" in note and "<b>" not in note and "[x]" not in note, note
    assert formula in note  # nothing in it that Markdown reads
