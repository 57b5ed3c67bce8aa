"""Where a study lives: the Optuna storage URL, checked before anything is created.

    storage_url(None, "quickstart")        # mlruns/optuna/quickstart.journal (one machine)
    check_storage("postgresql+psycopg://u:pw@db/optuna", tracking_uri)   # UsageError if it cannot work

A journal file serves the workers of one machine; an RDB (PostgreSQL, MySQL) serves several.
The check refuses the MLflow tracking database (Optuna and MLflow each keep an alembic_version
table), an SQLite file given as a journal path, a folder, an unwritable place and a server that
does not answer, so a bad --storage never leaves a half-created store behind.

A journal whose last write was cut (a full disk, a killed machine) is repaired before it is
opened: Optuna would append the next record after the half one, and from then on fail to read
the file at all. `repair_torn_end` drops a half record at the end, `repair_joined_records` one
that a later record was written after; both keep the file as it was beside it
(NAME.journal.torn-TIMESTAMP) and say what they kept. Anything else unreadable is named, with
what to do, as bad input.
"""
import contextlib
import json
import os
import shlex
import shutil
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import optuna
from optuna.storages.journal import JournalFileSymlinkLock

from optimstudy.errors import UsageError
from optimstudy.tracking.connectivity import check_password_encoded, hide_passwords, sqlite_path
from optimstudy.tracking.locks import exclusive

RDB_SCHEMES = ("postgresql", "sqlite", "mysql")

HEARTBEAT_S = 10  # a running trial records a heartbeat this often
STALE_AFTER_S = 60  # a trial on another machine with no heartbeat for this long is dead
UNMARKED_GRACE_S = 5  # a trial taken but with no owner marked for this long is dead (a live worker: milliseconds)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def default_storage_path(spec_name: str) -> Path:
    return Path.cwd() / "mlruns" / "optuna" / f"{spec_name}.journal"


def storage_url(url: str | None, spec_name: str | None) -> str:
    """--storage (or $OPTIMSTUDY_STORAGE) if given, else the spec's journal file."""
    check_password_encoded(url, "--storage")
    return url or str(default_storage_path(spec_name))


def check_storage(url: str, tracking_uri: str) -> None:
    """Refuse a storage that cannot work, before anything (either store) is created."""
    if "://" in url:
        scheme = urlparse(url).scheme
        if not scheme.startswith(RDB_SCHEMES):
            raise UsageError(f"--storage '{hide_passwords(url)}': unknown scheme '{scheme}'; expected "
                             "postgresql+psycopg://…, sqlite:///PATH, mysql://… or a journal file path")
        if _same_database(url, tracking_uri):
            raise UsageError(f"--storage '{hide_passwords(url)}' is the MLflow tracking database; Optuna needs "
                             "a database of its own (both keep an alembic_version table): pass another --storage")
        if scheme == "sqlite":
            _check_writable_folder(_sqlite_path(url).parent, url)
        else:
            _check_connects(url)
        return
    path = Path(url)
    database = sqlite_path(tracking_uri)
    if database is not None and path.resolve() == database.resolve():
        raise UsageError(f"--storage '{url}' is the MLflow tracking database; pass a journal file path "
                         "(e.g. mlruns/optuna/NAME.journal) or a database of its own")
    if path.is_dir():
        raise UsageError(f"--storage '{url}' is a folder; pass a journal file path such as {path}/NAME.journal")
    if path.exists():
        with path.open("rb") as file:
            head = file.read(16)
        if head.startswith(b"SQLite format 3"):
            raise UsageError(f"--storage '{url}' is an SQLite database, not an Optuna journal file; "
                             f"pass sqlite:///{path} if it is an Optuna database")
        if head and not head.lstrip().startswith(b"{"):
            raise UsageError(f"--storage '{url}' is not an Optuna journal file (it does not start with a JSON "
                             "record); pass a new path or the journal a sweep wrote")
    _check_writable_folder(path.parent, url)


def _same_database(url: str, tracking_uri: str) -> bool:
    a, b = urlparse(url), urlparse(tracking_uri)
    if a.scheme.startswith("sqlite") and b.scheme.startswith("sqlite"):
        return _sqlite_path(url).resolve() == _sqlite_path(tracking_uri).resolve()
    same_kind = a.scheme.split("+")[0] == b.scheme.split("+")[0]
    return same_kind and (a.hostname, a.port, a.path.rstrip("/")) == (b.hostname, b.port, b.path.rstrip("/"))


def _sqlite_path(url: str) -> Path:
    """sqlite:///relative/path or sqlite:////absolute/path (SQLAlchemy's form)."""
    return Path(url.split(":///", 1)[1]) if ":///" in url else Path(url)


def _check_writable_folder(folder: Path, url: str) -> None:
    """The folder takes a file; a folder not there yet, its nearest existing parent (the sweep makes
    it once every check has passed: bad input found later leaves nothing behind)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        probe = folder / f".optimstudy-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"--storage '{url}': '{folder}' cannot be written ({error.strerror}); "
                         "pass a writable path") from None


def _check_connects(url: str) -> None:
    import sqlalchemy as sa  # on first use: it imports sqlalchemy
    from sqlalchemy.pool import NullPool  # on first use: it imports sqlalchemy

    try:
        engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as error:  # noqa: BLE001  a missing driver, a bad host, refused credentials: say which
        reason = hide_passwords(str(getattr(error, "orig", None) or error).strip().splitlines()[0][:300])
        raise UsageError(f"--storage '{hide_passwords(url)}' cannot be opened: {reason}") from None


# ---- journal files cut mid-write -------------------------------------------------------------

RECORD_START = b'{"op_code":'  # how every record of Optuna's journal begins (json.dumps of its dict)


def repair_torn_end(path: Path) -> str | None:
    """Drop a last record that lacks its end (its newline); None when there is none. Under
    Optuna's own journal lock, so a record being written now is never taken for a cut one."""
    if not path.is_file() or _ends_whole(path):
        return None
    with _journal_lock(path):
        data = path.read_bytes()
        if data.endswith(b"\n"):  # a record was being written when we looked: whole now
            return None
        keep, records = data.rfind(b"\n") + 1, data.count(b"\n")
        backup = _backup(path)
        os.truncate(path, keep)
    return (f"{path}: its last record was cut off ({len(data) - keep} bytes without an end, as a full disk or a "
            f"killed machine leaves it) and is dropped; the {records} complete records before it are kept, the "
            f"file as it was is {backup.name}")


def repair_joined_records(path: Path) -> str:
    """A journal Optuna cannot read: a cut record that the next command wrote a whole record after,
    on the same line, is replaced by that record (Optuna never counted the cut one, so every later
    record stays consistent). Anything else unreadable is a UsageError naming the line."""
    with _journal_lock(path):
        lines = path.read_bytes().split(b"\n")
        ends_whole = lines[-1] == b""
        lines = lines[:-1] if ends_whole else lines
        repaired = 0
        for number, line in enumerate(lines, start=1):
            if _parses(line):
                continue
            start = line.rfind(RECORD_START)
            if start > 0 and _parses(line[start:]):
                lines[number - 1] = line[start:]
                repaired += 1
                continue
            here, aside = shlex.quote(str(path)), shlex.quote(f"{path}.corrupt")
            raise UsageError(
                f"study storage '{path}' is corrupt at line {number} of {len(lines)} (not an Optuna journal "
                f"record: {line[:80]!r}); the {number - 1} records before it are readable. Restore the file "
                f"from a backup, or keep those records (the trials recorded after them run again): "
                f"mv {here} {aside} && head -n {number - 1} {aside} > {here}")
        if not repaired:
            raise UsageError(f"study storage '{path}' cannot be read by Optuna, though every line is a record; "
                             "restore it from a backup or pass another --storage")
        backup = _backup(path)
        fixed = path.with_name(f"{path.name}.repairing")
        fixed.write_bytes(b"\n".join(lines) + (b"\n" if ends_whole else b""))
        os.replace(fixed, path)
    return (f"{path}: {repaired} record(s) cut off mid-write had later records written after them on the same "
            f"line; the cut records are dropped and the {len(lines)} whole records kept, the file as it was "
            f"is {backup.name}")


def _ends_whole(path: Path) -> bool:
    """Empty, or its last byte ends a record: one byte read, whatever the journal's size."""
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False


def _backup(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    backup, number = path.with_name(f"{path.name}.torn-{stamp}"), 1
    while backup.exists():
        number += 1
        backup = path.with_name(f"{path.name}.torn-{stamp}-{number}")
    shutil.copy2(path, backup)
    return backup


@contextlib.contextmanager
def _journal_lock(path: Path):
    """Optuna's own lock on a journal file (what it holds while it appends)."""
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


# ---- opening them -------------------------------------------------------------------------------

# A SQLite storage locked by another process (one still stopping, another sweep writing) is waited
# for this long, in SQLite's busy handler, before a statement fails (sqlite3's default: 5 s).
SQLITE_LOCK_WAIT_S = 60.0


def open_storage(url: str):
    """An RDB URL (postgresql://, sqlite:///, mysql://) or a journal file path."""
    if "://" in url:
        engine = {}
        if urlparse(url).scheme.startswith("sqlite"):
            wait_while_locked(_sqlite_path(url), url)
            engine = {"connect_args": {"timeout": SQLITE_LOCK_WAIT_S}}
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental": noise on every sweep
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=STALE_AFTER_S,
                                                  engine_kwargs=engine)
        except Exception as error:  # noqa: BLE001  as above: said as a usage error
            raise UsageError(hide_passwords(f"--storage '{url}' cannot be opened: "
                                            f"{str(error).splitlines()[0][:300]}")) from None
    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        repaired = repair_torn_end(path)  # before anything is appended after a half record
        try:
            storage = _journal_storage(path)
        except ValueError:  # JSONDecodeError, "Invalid log format": a record cut and then written after
            repaired = repair_joined_records(path)  # or a UsageError naming the line
            storage = _journal_storage(path)
    except OSError as error:
        raise UsageError(f"study storage '{path}' cannot be written ({error.strerror}); pass --storage") from None
    if repaired:
        print(f"optimstudy: repaired {repaired}; {_trials_kept(storage)}", file=sys.stderr, flush=True)
    return storage


def wait_while_locked(path: Path, url: str, wait_s: float = SQLITE_LOCK_WAIT_S) -> None:
    """If another process holds the SQLite file `path` locked for writing, say so in one line and
    wait for it, up to `wait_s`; still locked then: a UsageError saying by what, likely. Without
    this, the first write of a command started while another one was still stopping failed with
    SQLAlchemy's raw OperationalError ("database is locked")."""
    import sqlite3  # on first use: only a SQLite storage needs it

    if not path.exists():
        return
    for timeout in (2.0, wait_s):  # a moment silently: a busy sweep's workers lock it for milliseconds
        connection = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")  # a write lock, as the first write would take it
            connection.execute("ROLLBACK")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                return  # not a lock: RDBStorage says what it is
            if timeout != wait_s:
                print(f"optimstudy: the Optuna storage '{hide_passwords(url)}' is locked by another process "
                      f"(a sweep still stopping, or one writing); waiting for it, up to {wait_s:g} s",
                      file=sys.stderr, flush=True)
        finally:
            connection.close()
    raise UsageError(f"--storage '{hide_passwords(url)}' is still locked after {wait_s:g} s: another process "
                     "holds it (`fuser` on the file names it); let it finish, or stop it, then run the same "
                     "command again")


def _journal_storage(path: Path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _trials_kept(storage) -> str:
    """What a repaired journal holds: its studies and their trials by state."""
    parts = []
    for study in storage.get_all_studies():
        trials = storage.get_all_trials(storage.get_study_id_from_name(study.study_name), deepcopy=False)
        states = {}
        for trial in trials:
            states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
        parts.append(f"study '{study.study_name}': {len(trials)} trials ("
                     + ", ".join(f"{count} {state}" for state, count in states.items()) + ")")
    return "kept " + ("; ".join(parts) or "no study")


def open_existing_storage(url: str, hint: str):
    """open_storage for commands that read a study: a journal file must already exist."""
    if "://" not in url and not Path(url).exists():
        raise UsageError(f"no study storage at '{hide_passwords(url)}': {hint}")
    return open_storage(url)


def planning_lock(url: str, study_name: str):
    """Held while a command creates the study, checks its identity and queues trials: the first
    command plans, the next finds everything queued. Dies with its holder."""
    return exclusive(url, f"optimstudy plan {study_name}")


def make_sampler(spec, trial_number: int = 0):
    """A sampler for one trial, seeded by (spec seed, trial number): reproducible, and every trial
    draws anew (one seed for every trial made each trial sample the same value)."""
    search = spec.search
    seed = ((search.seed if search else 0) * 1_000_003 + trial_number) % 2**32
    if search is None:
        return optuna.samplers.RandomSampler(seed=seed)  # never asked: every grid trial is queued
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec):
    pruner = spec.search.pruner if spec.search else "none"
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(spec, storage, trial_number: int = 0, create: bool = False):
    kwargs = dict(study_name=spec.name, storage=storage, sampler=make_sampler(spec, trial_number),
                  pruner=make_pruner(spec))
    if create:
        return optuna.create_study(direction=spec.direction, load_if_exists=True, **kwargs)
    return optuna.load_study(**kwargs)


def study_exists(storage, name: str) -> bool:
    return any(summary.study_name == name for summary in optuna.get_all_study_summaries(storage))


def restart_study(storage, name: str, stamp: str) -> str:
    """Keep the old study under a new name, then delete it, so the name starts afresh."""
    kept = f"{name}.replaced-{stamp}"
    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=kept)
    optuna.delete_study(study_name=name, storage=storage)
    return kept
