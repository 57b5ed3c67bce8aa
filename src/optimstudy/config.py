"""RunConfig: one training run, frozen. `asdict(config)` is exactly what MLflow logs as params.

    RunConfig(problem="mnist_mlp", optimizer="adam", lr=1e-3, epochs=3).resolved()
"""
import math
from dataclasses import asdict, dataclass, field, replace

from optimstudy.errors import UsageError, unknown
from optimstudy.losses import LOSSES
from optimstudy.optimizers import optimizer_arguments
from optimstudy.problems import PROBLEMS

SCHEDULES = ("constant", "cosine")
DEFAULT_EPOCHS = 3


@dataclass(frozen=True)
class RunConfig:
    problem: str = "mnist_mlp"
    optimizer: str = "sgd"
    lr: float = 0.1
    opt: dict = field(default_factory=dict)  # extra optimizer arguments, e.g. {"betas": (0.9, 0.99)}
    epochs: float | None = None  # budget: epochs or steps (optimizer updates), not both
    steps: int | None = None
    batch_size: int = 64  # examples per micro-batch
    seed: int = 0  # initialisation and data order
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; None = default_threads()
    loss: str | None = None  # None = the problem's default
    zero_grad: bool = True  # False reproduces the forgotten-zero_grad bug
    accumulate: int = 1  # micro-batches per optimizer step
    eval_every: int | None = None  # steps between evaluations; None = each epoch (at most 10 per run)
    clip_grad_norm: float | None = None
    schedule: str = "constant"
    split_seed: int = 0  # the validation split, fixed so every run validates on the same digits
    val_fraction: float = 0.0625  # 1/16 of the training data: 500 of the 8k fixture, 3,750 of 60k
    diverge_factor: float = 100.0  # diverged: loss not finite, or |loss| > factor * max(|first loss|, 1)

    def __post_init__(self):
        if self.problem not in PROBLEMS:
            raise unknown("problem", self.problem, PROBLEMS)
        if self.loss is not None:
            if self.loss not in LOSSES:
                raise unknown("loss", self.loss, LOSSES)
            task = PROBLEMS[self.problem].task
            if LOSSES[self.loss][1] != task:
                fits = [name for name, (_, t) in LOSSES.items() if t == task]
                raise UsageError(
                    f"loss '{self.loss}' does not apply to {task} problem '{self.problem}'; valid: {', '.join(fits)}"
                )
        optimizer_arguments(self.optimizer, self.opt)  # raises on an unknown optimizer or argument
        _positive("lr", self.lr, float)
        _positive("batch_size", self.batch_size, int)
        _positive("accumulate", self.accumulate, int)
        if self.epochs is not None and self.steps is not None:
            raise UsageError("give a budget as epochs or steps, not both")
        if self.epochs is not None:
            _positive("epochs", self.epochs, float)
        if self.steps is not None:
            _positive("steps", self.steps, int)
        if self.eval_every is not None:
            _positive("eval_every", self.eval_every, int)
        if self.threads is not None:
            _positive("threads", self.threads, int)
        if self.clip_grad_norm is not None:
            _positive("clip_grad_norm", self.clip_grad_norm, float)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UsageError(f"seed must be an integer, got {self.seed!r}")
        if self.schedule not in SCHEDULES:
            raise unknown("schedule", self.schedule, SCHEDULES)
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")

    def resolved(self) -> "RunConfig":
        """Defaults made explicit (loss, budget, device), so what is logged is what ran."""
        from optimstudy.devices import resolve_device

        return replace(
            self,
            loss=self.loss or PROBLEMS[self.problem].default_loss,
            epochs=DEFAULT_EPOCHS if self.epochs is None and self.steps is None else self.epochs,
            device=resolve_device(self.device),
            threads=self.threads or default_threads(),
        )

    def params(self) -> dict:
        """Flat string-able params for a tracking store: optimizer arguments as opt.KEY."""
        flat = {k: v for k, v in asdict(self).items() if k != "opt"}
        flat.update({f"opt.{k}": v for k, v in sorted(self.opt.items())})
        return flat


def default_threads(workers: int = 1) -> int:
    """Torch threads per worker: the cores shared out, less one core for MLflow's writer when alone.

    Measured on 2 cores (MNIST MLP): untracked, 1 thread is ~10% slower than 2; tracked at
    2 threads is ~17% slower than untracked, because the writer process takes a torch thread's
    core; tracked at 1 thread is as fast as untracked.
    """
    from optimstudy.devices import cpu_count

    spare_for_writer = 1 if workers == 1 else 0
    return max(1, cpu_count() // workers - spare_for_writer)


def _positive(name: str, value, kind) -> None:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = ok_type and float(value).is_integer()
    if not ok_type or not math.isfinite(value) or value <= 0:
        expected = "a positive integer" if kind is int else "a positive number"
        raise UsageError(f"{name} must be {expected}, got {value!r}")
