"""One holder at a time for a named job on a store, however many commands or machines start at once.

    with exclusive("postgresql+psycopg://…/optuna", "plan quickstart"):
        ...   # queue the study's trials: the next command waits here, then finds them queued

The lock lives where the store lives and dies with its holder (a killed process never leaves
one behind): a PostgreSQL advisory lock or a MySQL named lock on a server database, an
fcntl lock on a file beside a local store (an SQLite database or an Optuna journal file).
A tracking server (http://) serialises its own writes: no lock.
"""
import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

from optimstudy.tracking.connectivity import sqlite_path

CONNECT_TIMEOUT_S = 10


@contextlib.contextmanager
def exclusive(store_url: str, name: str):
    scheme = urlparse(store_url).scheme if "://" in store_url else ""
    if scheme.startswith("postgresql"):
        with _server_lock(store_url, "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)",
                          {"key": _key(name)}, {"connect_timeout": CONNECT_TIMEOUT_S}):
            yield
    elif scheme.startswith("mysql"):
        with _server_lock(store_url, "SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)",
                          {"key": f"optimstudy {_key(name)}"}, {"connect_timeout": CONNECT_TIMEOUT_S}):
            yield
    elif scheme in ("http", "https"):
        yield
    else:
        path = sqlite_path(store_url) or Path(store_url)
        with _file_lock(path.with_name(f"{path.name}.{_key(name) & 0xFFFFFFFF:08x}.lock")):
            yield


def _key(name: str) -> int:
    """A stable signed 64-bit key (PostgreSQL advisory locks are keyed by bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _server_lock(url, acquire, release, params, connect_args):
    import sqlalchemy as sa  # on first use: it imports sqlalchemy
    from sqlalchemy.pool import NullPool  # on first use: it imports sqlalchemy

    engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(acquire), params)
            connection.commit()  # a session-level lock: no transaction left open while we hold it
            try:
                yield
            finally:
                connection.execute(sa.text(release), params)
                connection.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # released by the kernel if we die
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)
