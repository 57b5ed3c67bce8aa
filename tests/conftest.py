"""Shared fixtures: the real MNIST fixture, a real MLflow store, a real PostgreSQL server.

Tests that need MNIST or PostgreSQL skip with a reason on a user's machine without them;
CI sets OPTIMSTUDY_REQUIRE_FIXTURES=1 so that a missing fixture fails instead.
"""
import os
import signal
import uuid
from pathlib import Path

import pytest
from helpers import missing, run_cli


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    folder = os.environ.get("OPTIMSTUDY_DATA_DIR")
    if not folder or not (Path(folder) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        missing("MNIST fixture not found: set OPTIMSTUDY_DATA_DIR to a folder with MNIST/raw/ "
                "(e.g. ../shared/data/mnist-10k)")
    return folder


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory):
    """The user's cache folder, this session's own (a new store's template is kept there: compat.mlflow),
    shared by the pytest-xdist workers and every process the tests start: each session makes its
    first store as a new user's machine does, and reads nothing a session before left."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cache-home"
    folder.mkdir(exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    url = os.environ.get("OPTIMSTUDY_TEST_POSTGRES_URL")
    if not url:
        missing("no PostgreSQL server: set OPTIMSTUDY_TEST_POSTGRES_URL (see .ci/postgres.sh)")
    return url.rstrip("/")


@pytest.fixture
def postgres_database(postgres_server):
    """A fresh database on the loopback server; returns a function making more (Optuna and MLflow
    each need their own)."""
    import sqlalchemy as sa

    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    created = []

    def make() -> str:
        name = f"optimstudy_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return f"{postgres_server}/{name}"

    yield make
    with admin.connect() as connection:
        for name in created:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def cli():
    return run_cli


def pytest_configure(config):
    """Ctrl-C as a terminal sends it. A suite started as a background job (`cmd &` in a script) inherits
    SIGINT ignored, and so would every optimstudy process the tests start, which then could not be
    interrupted: the Ctrl-C tests would fail for the way the suite was launched."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """The tests marked `waits` spread evenly through the run rather than side by side. pytest-xdist
    hands tests out in this order, one to each worker in turn, so two waiting tests next to each
    other wait at once and leave a core idle; next to tests that compute, the wait costs nothing
    (docs/performance.md: what it cost)."""
    waiting = [item for item in items if item.get_closest_marker("waits")]
    spread = [item for item in items if not item.get_closest_marker("waits")]
    others = len(spread)
    for index, item in reversed(list(enumerate(waiting))):  # from the back: the places ahead stay put
        spread.insert(others * (index + 1) // (len(waiting) + 1), item)
    items[:] = spread
