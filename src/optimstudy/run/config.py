"""RunConfig: one training run, frozen. `asdict(config)` is exactly what MLflow logs as params.

    RunConfig(problem="mnist_mlp", optimizer="adam", lr=1e-3, epochs=3).resolved()
    RunConfig(problem="mymodule:my_problem", optimizer="torch.optim:Adadelta", lr=1.0,
              schedule="step", schedule_args={"gamma": 0.7}, val_fraction=0)
"""
import math
from dataclasses import asdict, dataclass, field, replace

from optimstudy.errors import UsageError, unknown
from optimstudy.facts import DEFAULT_VARY
from optimstudy.problems.losses import LOSSES
from optimstudy.problems.optimizers import optimizer_arguments, resolve_optimizer_class
from optimstudy.problems.parameter_groups import check_rest, rest_params
from optimstudy.problems.registry import resolve_problem
from optimstudy.problems.schedules import check_schedule, default_every
from optimstudy.run.devices import cpu_count, resolve_device

DEFAULT_EPOCHS = 3
VARY_PARTS = ("init", "order", "data")  # what a run's seed may vary: initial weights, batch order, train/val split
# RunConfig.update_norm_every's default, by measurement (MNIST MLP, one CPU thread, against the bare loop):
# every step 1.16-1.17x, every 10th 1.08-1.10x, never 1.07x; past 10 under 1% more (diagnostics' docstring)
UPDATE_NORM_EVERY = 10
FIXED_SEED = 0  # seeds a part the seed does not vary: the same for every seed
# torch takes seeds up to 2**64 - 1, but a seed must also fit the int64 columns of pandas and the stores
SEED_RANGE = "an integer from 0 to 2**63 - 1 (9223372036854775807)"


@dataclass(frozen=True)
class RunConfig:
    problem: str = "mnist_mlp"  # a registry name or "package.module:problem"
    optimizer: str = "sgd"
    lr: float = 0.1
    opt: dict = field(default_factory=dict)  # extra optimizer arguments, e.g. {"betas": (0.9, 0.99)}
    # with it, `optimizer` takes the hidden matrices only (Muon) and this one the rest, e.g.
    # {"optimizer": "adamw", "lr": 3e-4} or lr_ratio = its lr / lr; see parameter_groups
    rest: dict = field(default_factory=dict)
    epochs: float | None = None  # budget: epochs or steps (optimizer updates), not both
    steps: int | None = None
    batch_size: int = 64  # examples per micro-batch
    seed: int = 0  # what `vary` names: by default the initial weights and the batch order
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; None = default_threads()
    loss: str | None = None  # None = the problem's default
    zero_grad: bool = True  # False reproduces the forgotten-zero_grad bug
    accumulate: int = 1  # micro-batches per optimizer step
    # steps between evaluations; None = training.default_eval_every: each tenth of the run, and each epoch
    # when more often (no validation split: at most once an epoch); an epoch of one step sets no cadence
    eval_every: int | None = None
    # steps between exact update norms (steps k, 2k, ...): the one diagnostic that needs a copy of the
    # weights, ~10% of an MNIST MLP step on one CPU thread when taken every step (benchmarks/bench_floor.py);
    # 1 = every step. Loss, gradient norm and lr are recorded every step whatever it is
    update_norm_every: int = UPDATE_NORM_EVERY
    clip_grad_norm: float | None = None
    schedule: str = "constant"  # see problems/schedules.py: step, multistep, cosine, ..., or a path
    schedule_args: dict = field(default_factory=dict)  # e.g. {"step_size": 1, "gamma": 0.7}
    schedule_every: str | None = None  # "step" or "epoch"; None = the schedule's usual (resolved)
    shuffle: bool = True  # a fresh order of the training rows each epoch; False: the data's own order
    split_seed: int = 0  # the validation split, fixed so every run validates on the same digits
    vary: str = DEFAULT_VARY  # what the seed varies (VARY_PARTS); "data": the split drawn from (split_seed, seed)
    val_fraction: float = 0.0625  # 1/16 of the training data: 500 of the 8k fixture; 0: no validation split
    diverge_factor: float = 100.0  # diverged: loss not finite, or |loss| > factor * max(|first loss|, 1)
    compile: bool = False  # captured mode: torch.compile(mode="reduce-overhead") over the step (CUDA graphs on a GPU)

    def __post_init__(self):
        if not isinstance(self.problem, str):
            raise UsageError(f"problem must be a name or 'package.module:problem', got {self.problem!r}")
        task = resolve_problem(self.problem).task  # imports a path: every worker resolves it itself
        if self.loss is not None:
            if self.loss not in LOSSES:
                raise unknown("loss", self.loss, LOSSES)
            if task not in LOSSES[self.loss][1]:
                fits = [name for name, (_, tasks) in LOSSES.items() if task in tasks]
                raise UsageError(
                    f"loss '{self.loss}' does not apply to {task} problem '{self.problem}'; valid: {', '.join(fits)}"
                )
        _positive("lr", self.lr, float)
        # raises on an unknown optimizer or argument, a wrong type, or one the optimizer itself rejects
        object.__setattr__(self, "rest", check_rest(self.optimizer, self.rest, self.lr))  # {} -> the registry's
        optimizer_args = optimizer_arguments(self.optimizer, self.opt, lr=self.lr, rest=self.rest)
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
        _positive("update_norm_every", self.update_norm_every, int)
        if self.threads is not None:
            _positive("threads", self.threads, int)
        if self.clip_grad_norm is not None:
            _positive("clip_grad_norm", self.clip_grad_norm, float)
        check_seed("seed", self.seed)
        if not isinstance(self.schedule, str):
            raise UsageError(f"schedule must be a name or 'package.module:name', got {self.schedule!r}")
        if isinstance(self.schedule_args, dict):  # lists (TOML, JSON) as tuples: one logged form, however given
            object.__setattr__(self, "schedule_args", {k: tuple(v) if isinstance(v, list) else v
                                                       for k, v in self.schedule_args.items()})
        check_schedule(self.schedule, self.schedule_args, self.schedule_every or default_every(self.schedule),
                       resolve_optimizer_class(self.optimizer), self.lr, optimizer_args)
        if not isinstance(self.compile, bool):
            raise UsageError(f"compile must be true or false, got {self.compile!r}")
        if not isinstance(self.shuffle, bool):
            raise UsageError(f"shuffle must be true or false, got {self.shuffle!r}")
        check_seed("split_seed", self.split_seed)
        object.__setattr__(self, "vary", _vary_text(self.vary))
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) \
                or not 0 <= self.val_fraction < 1:
            raise UsageError(f"val_fraction must lie in [0, 1) (0: no validation split), got {self.val_fraction!r}")

    def varies(self, part: str) -> bool:
        return part in self.vary.split(",")

    def seed_of(self, part: str) -> int:
        """The seed of "init" or "order": the run's seed where `vary` names it, else FIXED_SEED."""
        return self.seed if self.varies(part) else FIXED_SEED

    def resolved(self) -> "RunConfig":
        """Defaults made explicit (loss, budget, device), so what is logged is what ran."""
        return replace(
            self,
            loss=self.loss or resolve_problem(self.problem).default_loss,
            epochs=DEFAULT_EPOCHS if self.epochs is None and self.steps is None else self.epochs,
            device=resolve_device(self.device),
            threads=self.threads or default_threads(),
            schedule_every=self.schedule_every or default_every(self.schedule),
        )

    def fitted(self, n_train: int) -> tuple["RunConfig", str]:
        """The batch size that can run on `n_train` rows, and a note when more was asked (full-batch)."""
        if self.batch_size < n_train:
            return self, ""
        note = "full-batch training" + (f": batch_size {self.batch_size} asked, the training split has {n_train} rows"
                                        if self.batch_size > n_train else "")
        return replace(self, batch_size=n_train), note

    def params(self) -> dict:
        """Flat string-able params for a tracking store: opt.KEY, rest.KEY and schedule.KEY for the arguments."""
        flat = {k: v for k, v in asdict(self).items() if k not in ("opt", "rest", "schedule_args")}
        flat.update({f"opt.{k}": v for k, v in sorted(self.opt.items())})
        flat.update(rest_params(self.rest, self.lr))
        flat.update({f"schedule.{k}": v for k, v in sorted(self.schedule_args.items())})
        return flat


def default_threads(workers: int = 1) -> int:
    """Torch threads per worker: the cores shared out, less one core for MLflow's writer when alone.

    Measured on 2 cores (MNIST MLP): untracked, 1 thread is ~10% slower than 2; tracked at
    2 threads is ~17% slower than untracked, because the writer process takes a torch thread's
    core; tracked at 1 thread is as fast as untracked.
    """
    spare_for_writer = 1 if workers == 1 else 0
    return max(1, cpu_count() // workers - spare_for_writer)


def is_seed(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def check_seed(name: str, value) -> None:
    if not is_seed(value):
        raise UsageError(f"{name} must be {SEED_RANGE}, got {value!r}")


def _vary_text(vary) -> str:
    """"init,order,data" from that text or a list, in VARY_PARTS' order: one logged form, however given."""
    parts = [part.strip() for part in vary.split(",")] if isinstance(vary, str) else vary
    if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, str) for p in parts) \
            or not set(parts) <= set(VARY_PARTS) or len(set(parts)) != len(parts):
        raise UsageError(f"vary must name what the seed varies, one or more of {', '.join(VARY_PARTS)} without "
                         f"repeats (e.g. vary = [\"init\", \"order\", \"data\"], --vary init,order,data), got {vary!r}")
    return ",".join(part for part in VARY_PARTS if part in parts)


def _positive(name: str, value, kind) -> None:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = ok_type and float(value).is_integer()
    if not ok_type or not math.isfinite(value) or value <= 0:
        expected = "a positive integer" if kind is int else "a positive number"
        raise UsageError(f"{name} must be {expected}, got {value!r}")
