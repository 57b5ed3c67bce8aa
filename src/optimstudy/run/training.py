"""The training loop: one plain function, with the lesson's three lines in plain sight.

    measure   loss = loss_fn(model(x), y)
    diagnose  loss.backward()      -> gradients (their norm is logged); no weight changes
    update    optimizer.step()     -> the only line that moves the weights

    from optimstudy import RunConfig, train
    history = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=2000))
    history.final["excess_loss"]   # < 1e-3

Per-step metrics stay on the device and are copied to the host every SYNC_EVERY steps, so
a GPU run has no host sync per step; divergence is detected at those copies. Loss, gradient
norm and lr are every step's; the update norm every `update_norm_every`-th step's (NaN in
`History.step_metrics` between: see diagnostics for what each costs).
"""
import math
import time
from dataclasses import dataclass, field

import torch

from optimstudy.problems.data import Data, Split
from optimstudy.problems.losses import LOSSES, mse
from optimstudy.problems.optimizers import has_modes
from optimstudy.problems.parameter_groups import build_optimizer
from optimstudy.problems.registry import Problem, resolve_problem
from optimstudy.problems.schedules import make_schedule
from optimstudy.run.batches import Batches, epochs_to_steps, steps_per_epoch
from optimstudy.run.config import RunConfig
from optimstudy.run.devices import synchronize
from optimstudy.run.diagnostics import StepRecorder, capture
from optimstudy.run.loggers import Logger, NullLogger

SYNC_EVERY = 50  # steps between host copies of the per-step metrics
EVALS_A_RUN = 10  # the default cadence's evaluations a run, besides step 0 (default_eval_every)
EVAL_BATCH = 1024  # examples per forward pass when evaluating (4096 took too much memory in a CNN run)


@dataclass
class History:
    config: RunConfig
    steps: list[int] = field(default_factory=list)
    # train_loss, grad_norm, lr, update_norm (NaN at steps its cadence skips), ...: one value per step
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)  # {"step": s, "val_loss": ..., "val_accuracy": ...}
    final: dict = field(default_factory=dict)
    diverged: bool = False
    diverged_at_step: int | None = None
    wall_s: float = 0.0  # the whole loop, evaluations included
    eval_s: float = 0.0  # of which evaluating: samples_per_s counts training time only
    samples_per_s: float = 0.0
    data_sizes: dict = field(default_factory=dict)
    note: str = ""  # e.g. "full-batch training: batch_size 256 asked, the training split has 240 rows"
    model: object = field(default=None, repr=False)  # the trained module, for --save-model

    def summary(self) -> dict:
        c = self.config
        return {
            "problem": c.problem, "optimizer": c.optimizer, "lr": c.lr, "seed": c.seed, "device": c.device,
            "steps": self.steps[-1] if self.steps else 0, "epochs": c.epochs, "batch_size": c.batch_size,
            "full_batch": c.batch_size >= self.data_sizes.get("train", math.inf), "note": self.note,
            "diverged": self.diverged, "diverged_at_step": self.diverged_at_step,
            "wall_s": round(self.wall_s, 4), "eval_s": round(self.eval_s, 4),
            "samples_per_s": round(self.samples_per_s, 1),
            "final": self.final,
        }


@torch.no_grad()
def evaluate(model, split: Split, loss_fn, task: str | bool) -> dict:
    """Loss (accuracy for classifiers, error rate too for ±1 labels) over a whole split; {} for an empty one."""
    task = {True: "classification", False: "regression"}.get(task, task)
    if len(split) == 0:
        return {}
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), EVAL_BATCH):
        x, y = split.x[start:start + EVAL_BATCH], split.y[start:start + EVAL_BATCH]
        output = model(x)
        total_loss += loss_fn(output, y).double() * len(y)
        if task == "classification":
            correct += (output.argmax(1) == y).sum()
        elif task == "binary":  # labels ±1: right when the score has the label's sign
            correct += ((output.squeeze(-1) > 0) == (y > 0)).sum()
    model.train()
    metrics = {"loss": float(total_loss) / len(split)}
    if task != "regression":
        metrics["accuracy"] = int(correct) / len(split)
    if task == "binary":
        metrics["error_rate"] = 1.0 - metrics["accuracy"]
    return metrics


def total_steps(config: RunConfig, n_train: int) -> int:
    if config.steps is not None:
        return config.steps
    return epochs_to_steps(config.epochs, n_train, config.batch_size, config.accumulate)


def load_data(config: RunConfig, problem: Problem | None = None, data_dir: str | None = None) -> Data:
    """The data of `config`'s problem, split as `config` says (read once per process)."""
    problem = problem or resolve_problem(config.problem)
    return problem.load_data(split_seed=config.split_seed, val_fraction=config.val_fraction,
                             device=config.device, data_dir=data_dir, name=config.problem,
                             run_seed=config.seed if config.varies("data") else None)


@dataclass
class Setup:
    """What the loop works with, built from the config, the problem and the data."""
    model: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    schedule: object  # a torch LR scheduler or None
    batches: Batches
    loss_fn: object
    n_steps: int
    per_epoch: int  # optimizer steps per epoch
    eval_every: int
    eval_split: str  # "val", or "train" when there is no validation split


def default_eval_every(n_steps: int, per_epoch: int, has_val: bool) -> int:
    """Steps between evaluations when the config leaves it open (step 0 and the last step are always evaluated).

    Every tenth of the run (EVALS_A_RUN), and:
    - with a validation split, each epoch when that comes more often: a pass over it (1/16 of the rows)
      costs ~2% of an epoch's training, so per-epoch curves are cheap;
    - without one, at most once an epoch: a pass over the whole training split costs about a third of
      an epoch's training (pytorch/examples evaluates once an epoch).
    An epoch of one step (full batch) sets no cadence: every step would be 300 evaluations for 300
    steps, 23% of a full-batch run's time on a 400 x 3,000 problem.
    """
    tenth = max(1, math.ceil(n_steps / EVALS_A_RUN))
    if per_epoch == 1:
        return tenth
    return min(per_epoch, tenth) if has_val else max(per_epoch, tenth)


def set_up(config: RunConfig, problem: Problem, data: Data) -> Setup:
    torch.manual_seed(config.seed_of("init"))  # the initial weights, and any randomness of the model's own
    model = problem.build_model(data.info).to(config.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.opt, config.rest)  # rest: Muon's AdamW
    n_steps = total_steps(config, len(data.train))
    per_epoch = steps_per_epoch(len(data.train), config.batch_size, config.accumulate)
    schedule = run_schedule(config, optimizer, n_steps, per_epoch)
    batches = Batches(data.train, config.batch_size, torch.Generator().manual_seed(config.seed_of("order")),
                      config.shuffle)
    eval_every = config.eval_every or default_eval_every(n_steps, per_epoch, has_val=len(data.val) > 0)
    return Setup(model, params, optimizer, schedule, batches, LOSSES[config.loss][0], n_steps, per_epoch,
                 eval_every, "val" if len(data.val) else "train")


def run_schedule(config: RunConfig, optimizer, n_steps: int, per_epoch: int):
    """`config`'s lr schedule over `optimizer`, counted in steps or epochs as it says (None: constant)."""
    schedule_steps = n_steps if config.schedule_every == "step" else math.ceil(n_steps / per_epoch)
    return make_schedule(config.schedule, config.schedule_args, optimizer, schedule_steps)


def train(config: RunConfig, logger: Logger | None = None, *, data: Data | None = None,
          on_eval=None, data_dir: str | None = None, progress=None) -> History:
    """Train one model as `config` says. `on_eval(step, metrics)` may raise errors.Stop (the run then ends KILLED)."""
    config, problem = config.resolved(), resolve_problem(config.problem)
    logger, device = logger or NullLogger(), config.device
    if config.threads:
        torch.set_num_threads(config.threads)
    data = data or load_data(config, problem, data_dir)
    config, note = config.fitted(len(data.train))  # the batch that runs is the batch that is reported
    run = set_up(config, problem, data)
    model, params, optimizer, batches, loss_fn, n_steps = (run.model, run.params, run.optimizer, run.batches,
                                                           run.loss_fn, run.n_steps)
    history = History(config, data_sizes=data.sizes(), note=note, model=model)
    recorder = StepRecorder(params, diverge_factor=config.diverge_factor, trace_weights=problem.traces_weights,
                            captured=config.compile, update_every=config.update_norm_every)
    forward = capture(model, optimizer) if config.compile else model  # compiled forward and step, or eager
    # Schedule-Free optimizers train at one point of their weight sequence and are evaluated at another
    # (the average): optimizer.eval() moves the weights there, optimizer.train() moves them back
    switches_weights = has_modes(optimizer)

    def run_eval(step):
        synchronize(device)  # the training steps queued on a GPU are not the evaluation's time
        eval_started = time.perf_counter()
        if switches_weights:
            optimizer.eval()
        metrics = evaluate_run(model, data, run.eval_split, loss_fn, problem.task)
        if switches_weights:
            optimizer.train()
        history.eval_s += time.perf_counter() - eval_started
        history.evals.append({"step": step, **metrics})
        logger.log(step, metrics)
        if on_eval is not None:
            on_eval(step, metrics)

    model.train()
    if switches_weights:
        optimizer.train()
    synchronize(device)
    started = time.perf_counter()
    step = 0
    try:
        run_eval(0)
        for step in range(1, n_steps + 1):
            if config.zero_grad:
                optimizer.zero_grad(set_to_none=True)
            micro_losses = []
            for _ in range(config.accumulate):
                x, y = next(batches)
                loss = loss_fn(forward(x), y)  # measure
                # diagnose: fills p.grad, changes no weight (scaled so K micro-batches average, not add)
                (loss if config.accumulate == 1 else loss / config.accumulate).backward()
                micro_losses.append(loss.detach())
            recorder.gradients(micro_losses)  # the step's loss and gradient norm, kept on the device
            if config.clip_grad_norm:
                torch.nn.utils.clip_grads_with_norm_(params, config.clip_grad_norm, recorder.grad_norm())
            optimizer.step()  # update
            recorder.update(optimizer.param_groups[0]["lr"])  # how far the step moved the weights (every k-th step)
            if run.schedule is not None and (config.schedule_every == "step" or step % run.per_epoch == 0):
                run.schedule.step()

            at_eval = step % run.eval_every == 0 or step == n_steps
            if (step % SYNC_EVERY == 0 or at_eval) and recorder.flush(history, logger):
                break
            if at_eval:
                run_eval(step)
            if progress is not None:
                progress(step, n_steps)
    except BaseException:  # a pruned trial, Ctrl-C or an error: keep every finished step, then go on up
        recorder.flush(history, logger)
        raise
    finally:
        synchronize(device)
        history.wall_s = time.perf_counter() - started
    recorder.flush(history, logger)
    if switches_weights:  # the final metrics, and a saved model, are of the evaluation weights; it stays there
        optimizer.eval()
    return finish(history, model, data, loss_fn, problem, logger)


def evaluate_run(model, data: Data, split: str, loss_fn, task: str) -> dict:
    """val_loss, val_accuracy, ...; without a validation split the whole training split: train_full_loss, ..."""
    prefix = "val_" if split == "val" else "train_full_"
    return {f"{prefix}{k}": v for k, v in evaluate(model, getattr(data, split), loss_fn, task).items()}


def finish(history: History, model, data: Data, loss_fn, problem: Problem, logger) -> History:
    """Throughput from the batch that ran, the final metrics over whole splits, logged once."""
    config, done = history.config, history.steps[-1] if history.steps else 0
    training_s = max(history.wall_s - history.eval_s, 1e-9)
    history.samples_per_s = done * config.batch_size * config.accumulate / training_s
    last_eval = history.evals[-1] if history.evals and history.evals[-1]["step"] == done else {}
    history.final = final_metrics(model, data, loss_fn, problem, last_eval)
    final_row = {f"final_{k}": v for k, v in history.final.items() if v is not None}
    final_row.update(diverged=float(history.diverged), wall_s=history.wall_s, eval_s=history.eval_s,
                     samples_per_s=history.samples_per_s)
    if history.diverged:
        final_row["diverged_at_step"] = float(history.diverged_at_step)
    logger.log(done, final_row)
    return history


def final_metrics(model, data: Data, loss_fn, problem: Problem, last_eval: dict | None = None) -> dict:
    """Losses over whole splits (never the last minibatch); the test split is touched only here.

    Without a validation split, val_* are None: an objective must then name a train_* metric (the
    whole training split). The names are objectives.final_metric_names'. `last_eval`, an evaluation
    of the final weights, is reused rather than computed again.
    """
    def whole(split: str, prefix: str) -> dict:
        known = {k[len(prefix):]: v for k, v in (last_eval or {}).items() if k.startswith(prefix)}
        return known or evaluate(model, getattr(data, split), loss_fn, problem.task)

    train_metrics, val = whole("train", "train_full_"), whole("val", "val_")
    test = evaluate(model, data.test, loss_fn, problem.task)
    excess = None
    if problem.optimum is not None:
        train_mse = evaluate(model, data.train, mse, "regression")["loss"]
        excess = train_mse - problem.optimum(data.train) if math.isfinite(train_mse) else math.inf
    clean = lambda v: v if v is None or math.isfinite(v) else None  # noqa: E731  JSON has no NaN
    final = {
        "train_loss": clean(train_metrics["loss"]), "train_accuracy": train_metrics.get("accuracy"),
        "val_loss": clean(val.get("loss")), "val_accuracy": val.get("accuracy"),
        "test_loss": clean(test["loss"]), "test_accuracy": test.get("accuracy"),
        "excess_loss": excess if excess is None or math.isfinite(excess) else None,
    }
    if problem.task == "binary":
        final.update({f"{split}_error_rate": None if accuracy is None else 1.0 - accuracy
                      for split, accuracy in (("train", final["train_accuracy"]), ("val", final["val_accuracy"]),
                                              ("test", final["test_accuracy"]))})
    return final
