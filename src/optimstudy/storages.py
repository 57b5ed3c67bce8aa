"""Where a study lives: the Optuna storage URL, checked before anything is created.

    storage_url(None, "quickstart")        # mlruns/optuna/quickstart.journal (one machine)
    check_storage("postgresql+psycopg://u:pw@db/optuna", tracking_uri)   # UsageError if it cannot work

A journal file serves the workers of one machine; an RDB (PostgreSQL, MySQL) serves several.
The check refuses the MLflow tracking database (Optuna and MLflow each keep an alembic_version
table), an SQLite file given as a journal path, a folder, an unwritable place and a server that
does not answer, so a bad --storage never leaves a half-created store behind.
"""
import os
from pathlib import Path
from urllib.parse import urlparse

from optimstudy.errors import UsageError

RDB_SCHEMES = ("postgresql", "sqlite", "mysql")


def default_storage_path(spec_name: str) -> Path:
    return Path.cwd() / "mlruns" / "optuna" / f"{spec_name}.journal"


def storage_url(url: str | None, spec_name: str) -> str:
    return url or str(default_storage_path(spec_name))


def check_storage(url: str, tracking_uri: str) -> None:
    """Refuse a storage that cannot work, before anything (either store) is created."""
    if "://" in url:
        scheme = urlparse(url).scheme
        if not scheme.startswith(RDB_SCHEMES):
            raise UsageError(f"--storage '{url}': unknown scheme '{scheme}'; expected postgresql+psycopg://…, "
                             "sqlite:///PATH, mysql://… or a journal file path")
        if _same_database(url, tracking_uri):
            raise UsageError(f"--storage '{url}' is the MLflow tracking database; Optuna needs a database of its "
                             "own (both keep an alembic_version table): pass another --storage")
        if scheme == "sqlite":
            _check_writable_folder(_sqlite_path(url).parent, url)
        else:
            _check_connects(url)
        return
    path = Path(url)
    if tracking_uri.startswith("sqlite:///") and path.resolve() == Path(tracking_uri[len("sqlite:///"):]).resolve():
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
    """The folder exists (made here: it is no store yet) and takes a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".optimstudy-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"--storage '{url}': '{folder}' cannot be written ({error.strerror}); "
                         "pass a writable path") from None


def _check_connects(url: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    try:
        engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as error:  # a missing driver, a bad host, refused credentials: say which
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0][:300]
        raise UsageError(f"--storage '{url}' cannot be opened: {reason}") from None
