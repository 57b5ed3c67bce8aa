"""The tracking tests' store: a real SQLite store's URI, not created yet (the test or its writer
creates it), without the writer's system-metrics sampler (every stored point is the test's, and
less CPU per test); the writers this test started are stopped after it."""
import pytest

from optimstudy.tracking.writer_handle import stop_writers


@pytest.fixture
def store(tracking_uri, monkeypatch):
    monkeypatch.setenv("OPTIMSTUDY_SYSTEM_METRICS_S", "0")
    yield tracking_uri
    stop_writers()
