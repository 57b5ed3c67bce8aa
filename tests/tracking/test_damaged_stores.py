"""Stores damaged the way disks damage them: a journal whose last write was cut, an MLflow
database cut short. A cut journal record is repaired (the file kept beside it) and the study goes
on; anything that cannot be repaired is named, with what to do, and exits 2 without a traceback.

One real sweep makes the stores (a real process: a trial it leaves cut must name a worker that is
gone, not this test process); each test damages its own copy. The repairing sweep and the exits 2
on a corrupt MLflow store run as real processes; a `check` that only reads or repairs, the sweep
that finishes a repaired study, and the refusal of a journal corrupt in the middle run in this process.
"""
import os
import shutil
from pathlib import Path

import optuna
import pytest
from helpers import in_process, once_per_session, run_cli, write_tiny_spec
from optuna.trial import TrialState

CONFIGURATIONS = 4




def sweep_damaged(folder: Path) -> None:
    write_tiny_spec(folder, "damaged", steps=40)
    run_cli("sweep", "damaged.toml", cwd=folder, check_exit=0)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A folder holding a finished sweep's spec, journal and MLflow store (read only: each test copies it)."""
    return once_per_session(tmp_path_factory, "shared-damaged-sweep", sweep_damaged)


@pytest.fixture
def copy(swept, tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(swept, folder)
    return folder


def journal(folder):
    return folder / "mlruns" / "optuna" / "damaged.journal"


def complete_configurations(folder) -> int:
    study = optuna.load_study(study_name="damaged", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal(folder)))))
    return len({t.user_attrs["optimstudy.key"] for t in study.trials if t.state == TrialState.COMPLETE})


@pytest.mark.slow
def test_a_journal_cut_mid_record_is_repaired_and_the_study_completes(copy):
    whole = journal(copy).read_bytes()
    os.truncate(journal(copy), len(whole) - 40)  # as `truncate -s -40` (a full disk) leaves it
    result = in_process("sweep", "damaged.toml", cwd=copy)  # its subject is the repair, not a process
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "last record was cut off" in result.stderr and "complete records before it are kept" in result.stderr
    assert "study 'damaged': 4 trials" in result.stderr  # what was kept, said
    backups = list(journal(copy).parent.glob("damaged.journal.torn-*"))
    assert [b.read_bytes() for b in backups] == [whole[:-40]]  # the file as it was, beside it
    assert complete_configurations(copy) == CONFIGURATIONS  # the finished trials kept, the cut one run again
    checked = in_process("check", "damaged.toml", cwd=copy)
    assert checked.returncode == 0 and "ok:" in checked.stdout, checked.stdout + checked.stderr


@pytest.mark.slow
def test_a_cut_record_with_a_record_written_after_it_is_repaired(copy):
    """What an older optimstudy left: Optuna appended the next record right after the cut one, and
    every later read failed with "JSONDecodeError: Expecting ':' delimiter"."""
    os.truncate(journal(copy), journal(copy).stat().st_size - 40)
    backend = optuna.storages.journal.JournalFileBackend(str(journal(copy)))
    for value in (1, 2):  # the next command's records: the first lands on the cut record's line
        backend.append_logs([{"op_code": 2, "worker_id": "an-older-sweep", "study_id": 0, "user_attr": {"x": value}}])
    with pytest.raises(ValueError):  # the state the issue describes: Optuna cannot read it
        list(optuna.storages.journal.JournalFileBackend(str(journal(copy))).read_logs(0))
    result = in_process("check", "damaged.toml", cwd=copy)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert "written after them on the same line" in result.stderr and "damaged.journal.torn-" in result.stderr
    assert complete_configurations(copy) == CONFIGURATIONS - 1  # the trial whose end was cut is no longer complete
    resumed = in_process("sweep", "damaged.toml", cwd=copy)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert complete_configurations(copy) == CONFIGURATIONS


def test_a_journal_corrupt_in_the_middle_exits_2_naming_the_file_and_line(tmp_path):
    path = tmp_path / "broken.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="broken", storage=storage)
    for value in range(3):
        study.enqueue_trial({"x": value})
    lines = path.read_bytes().split(b"\n")
    lines[1] = b'{"op_code":4,"worker_id":"w","study_id":0,"datetim'  # cut, and more records after it
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    result = in_process("check", "--experiment", "broken", "--storage", path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"'{path}' is corrupt at line 2 of" in result.stderr and "head -n 1" in result.stderr
    assert path.read_bytes() == before and not list(tmp_path.glob("*.torn-*"))  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("command", [["report", "--out", "analysis"], ["check", "damaged.toml"]])
def test_a_truncated_mlflow_store_is_named_corrupt(copy, cli, command):
    store = copy / "mlruns" / "mlflow.db"
    os.truncate(store, store.stat().st_size // 2)
    result = cli(*command, cwd=copy)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert f"the store is corrupt ({store}: database disk image is malformed)" in result.stderr, result.stderr
    assert "missing" not in result.stdout and "no runs" not in result.stderr
