"""A sweep's options, carried whole from the command line to every worker and trial.

    cli.cmd_sweep -> SweepOptions -> command.sweep -> WorkerOptions -> trials.work -> each trial

`optimstudy sweep`'s flags become one SweepOptions, its tracking URI resolved once, as it is built;
the sweep adds what it learns (the study's storage URL, its parent run, its experiment) and hands
each worker one WorkerOptions: this process, a forked worker and a fresh process alike (the last
two as JSON). Standard library only: the command line builds them before torch is imported.
"""
import json
from dataclasses import asdict, dataclass, replace

WORKER_OPTIONS = "OPTIMSTUDY_WORKER_OPTIONS"  # a fresh worker process's options (trials.worker_main)


@dataclass(frozen=True)
class WorkerOptions:
    """What every worker of a sweep works with."""
    spec_path: str
    storage: str  # the Optuna storage URL
    tracking_uri: str | None = None  # None: untracked trials
    parent_run_id: str | None = None
    experiment_id: str | None = None  # the study's MLflow experiment; None: looked up by the writer
    data_dir: str | None = None
    threads: int | None = None
    alive_fd: int | None = None  # a worker process's read end of the sweep's pipe: closed when the sweep dies
    trial_timeout_s: float | None = None  # a trial past this wall-clock time is FAILED (processes.Watchdog)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerOptions":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class SweepOptions:
    """What `optimstudy sweep` was asked besides the spec."""
    workers: int = 1
    storage: str | None = None  # the Optuna storage URL; None: a journal file under mlruns/optuna/ (with_storage)
    tracking_uri: str | None = None  # as resolved (tracking.client.resolve_tracking_uri); None: resolved by sweep()
    data_dir: str | None = None
    dry_run: bool = False
    as_json: bool = False
    restart: bool = False
    until_decided: bool = False  # add seeds until decided even without a [decide] table (its defaults)
    trial_timeout_s: float | None = None  # --trial-timeout; None: the spec's trial_timeout_s
    # the command line that runs this sweep again (cli.cmd_sweep's own): how the sweep goes on after a
    # trial of its own process is stuck where nothing reaches it (restart_sweep); None: it ends instead
    restart_argv: tuple | None = None

    def with_storage(self, study_name: str) -> "SweepOptions":
        """The storage URL as given, else the study's default journal file."""
        from optimstudy.sweep.storages import storage_url  # on first use: it imports optuna

        return replace(self, storage=storage_url(self.storage, study_name))

    def for_workers(self, spec, parent_run_id: str) -> WorkerOptions:
        """Each worker's options, once the study's storage and parent run exist."""
        return WorkerOptions(spec.path, self.storage, self.tracking_uri, parent_run_id, data_dir=self.data_dir,
                             threads=spec.settings.get("threads"),
                             trial_timeout_s=self.trial_timeout_s or spec.trial_timeout_s)
