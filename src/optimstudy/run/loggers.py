"""The small interface the training loop logs through. MLflow sits behind it in tracking/mlflow_logger.py.

The loop calls `log(step, metrics)` for evaluations and `log_steps(steps, columns)` for the
per-step metrics, which it copies off the device in blocks. What happens to the numbers
(nothing, a buffer, a writer process) is the logger's business, so library users and tests
need no MLflow.
"""
from collections.abc import Mapping, Sequence
from typing import Protocol


class Logger(Protocol):
    run_id: str | None

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_steps(self, steps: Sequence[int], columns: Mapping[str, Sequence[float]]) -> None:
        """One value per step for each metric: columns[name][i] belongs to steps[i]."""

    def close(self, status: str = "FINISHED") -> None: ...


class NullLogger:
    run_id = None

    def log(self, step, metrics):
        pass

    def log_steps(self, steps, columns):
        pass

    def close(self, status="FINISHED"):
        pass

