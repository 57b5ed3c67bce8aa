"""Seeds in one model: a configuration's seeds trained together as one batched computation.

    configs = [RunConfig(problem="linreg", optimizer="adam", lr=0.01, steps=300, seed=s) for s in range(8)]
    stack = prepare_stack(configs)            # a Stack, or the reason it cannot be one (a str)
    histories = train_stack(stack) if isinstance(stack, Stack) else [train(c) for c in configs]

Why: a small model's step is Python, autograd and optimizer dispatch, not arithmetic, and each
separate seed pays all of it. Here every weight gets a leading seed axis (torch.func's
`stack_module_state`), the forward runs once for all seeds (`vmap` over `functional_call`), the
loss is the sum of the seeds' losses, so each seed's slice of the gradient is its own gradient,
and one optimizer steps the stacked tensors. That is the same mathematics as S separate runs
exactly when the optimizer is elementwise (problems.optimizers.is_elementwise: each element's
update from its own gradient history and a step count the seeds share), so anything else runs
the seeds one after another (`why_not_stacked`).

What makes each seed its own run, as `training.train` would have run it:
- its model is built by `training.set_up`, the same call as a separate run's (the same initial
  weights), and then stacked; its batches come from its own `Batches` (the same order), from its
  own data split when `vary` names data;
- its diagnostics (loss, gradient norm, update norm, lr, divergence) are computed per seed by
  `diagnostics.StackedRecorder` and written by the same `record_block` as a separate run's;
- its evaluations and final metrics are the unchanged `training.evaluate_run` and `training.finish`
  on its own module, into which its slice of the stacked weights is copied first;
- a seed that diverges is finished at the flush that finds it, as a separate run stops there:
  its final metrics are taken then, and from then on its loss is masked out of the sum (its
  gradient is zero) and nothing of it is recorded. An optimizer's state still moves its slice
  (Adam's moments), which no other seed sees.
What is shared: wall_s, eval_s and samples_per_s are the stack's (each seed took that long).

The model must run under vmap and give, on the first training rows, the losses each seed's own
module gives (`prepare_stack` checks it before any run is created): not BatchNorm in training
mode, dropout or other randomness, or data-dependent control flow.
"""
import contextlib
import copy
import time
from dataclasses import dataclass, field, replace

import torch
from torch.func import functional_call, stack_module_state, vmap

from optimstudy.errors import Stop
from optimstudy.problems.data import Data
from optimstudy.problems.optimizers import (
    OPTIMIZERS,
    has_modes,
    is_elementwise,
    optimizer_arguments,
    resolve_optimizer_class,
)
from optimstudy.problems.registry import Problem, resolve_problem
from optimstudy.run.config import RunConfig
from optimstudy.run.devices import synchronize
from optimstudy.run.diagnostics import StackedRecorder
from optimstudy.run.loggers import NullLogger
from optimstudy.run.training import SYNC_EVERY, History, Setup, evaluate_run, finish, load_data, run_schedule, set_up

# The most seeds in one stack, by device kind. CPU, measured (linreg, Adam, 300 steps, one thread, in
# one process at load 8 on 2 cores): 784 ms a seed alone, 329 stacked by 4, 204 by 8, 108 by 16, 68 by
# 32. Tiny models gain past 8, but the MNIST MLP is arithmetic-bound on a CPU thread (benchmarks/
# bench_stacked.py: 1.14x at 8) and larger stacks were not measured there, and a sweep's seeds in fewer,
# larger stacks leave its other workers idle: 8, until measured further. GPU: not measured (no GPU was
# lent); 32, the proposal, where a small model leaves the device idle between kernels.
MAX_STACK = {"cpu": 8, "cuda": 32, "mps": 8}
CHECK_ROWS = 64  # training rows the vmap check compares on
CHECK_RTOL = 1e-4


def max_stack(device: str) -> int:
    return MAX_STACK.get(device.split(":")[0], 8)


def why_not_stacked(configs: list[RunConfig]) -> str | None:
    """Why these configs cannot train as one stack, or None. Configs resolved; the model is checked later."""
    if len(configs) < 2:
        return "a single seed"
    first = configs[0]
    if any(replace(c, seed=first.seed) != first for c in configs[1:]):
        return "the runs differ in more than their seed"
    if len({c.seed for c in configs}) != len(configs):
        return "a seed is repeated"
    name = first.optimizer
    if not is_elementwise(name):
        if name in OPTIMIZERS:
            return (f"optimizer '{name}' is not elementwise ({OPTIMIZERS[name].description}): stacked seeds "
                    "would mix")
        return (f"optimizer '{name}' is not known to be elementwise (an update that looks across a tensor or "
                "across tensors would mix the seeds; declare your class's with a class attribute `elementwise = True`)")
    if first.rest:
        return "a rest optimizer: the parameter groups by rule are not stacked"
    if first.clip_grad_norm:
        return "clip_grad_norm clips by a global gradient norm, which would mix the seeds"
    if first.compile:
        return "captured mode (compile) is not stacked"
    return None


@dataclass
class Stack:
    """S seeds of one configuration, set up and stacked: what `train_stack` trains."""
    configs: list[RunConfig]  # resolved and fitted, one per seed
    notes: list[str]
    problem: Problem
    datas: list[Data]
    runs: list[Setup]  # each seed's own set-up (its module, batches, cadence)
    params: dict  # name -> stacked trainable weight (seeds, ...)
    buffers: dict
    base: torch.nn.Module  # the model's structure on the meta device, for functional_call
    optimizer: torch.optim.Optimizer
    schedule: object
    shared_data: bool  # every seed trains on the same split (vary has no "data")
    stopped: dict = field(default_factory=dict)  # seed index -> errors.Stop (a pruned seed)

    @property
    def seeds(self) -> list[int]:
        return [c.seed for c in self.configs]


def prepare_stack(configs: list[RunConfig], *, datas: list[Data] | None = None, data_dir: str | None = None):
    """A Stack of `configs` (seeds of one configuration), or the reason they run one after another (a str)."""
    configs = [c.resolved() for c in configs]
    reason = why_not_stacked(configs)
    if reason:
        return reason
    first, problem = configs[0], resolve_problem(configs[0].problem)
    if first.threads:
        torch.set_num_threads(first.threads)
    shared = not first.varies("data")
    if datas is None:
        datas = [load_data(first, problem, data_dir)] * len(configs) if shared else \
            [load_data(c, problem, data_dir) for c in configs]
    fitted = [c.fitted(len(d.train)) for c, d in zip(configs, datas)]
    configs, notes = [c for c, _ in fitted], [note for _, note in fitted]
    runs = [set_up(c, problem, d) for c, d in zip(configs, datas)]
    models = [run.model for run in runs]
    if any(hasattr(m, "running_mean") and m.training for m in models[0].modules()):
        return "BatchNorm in training mode: its batch statistics and running averages are not stacked"
    params, buffers = stack_module_state(models)
    buffers.update({name: p for name, p in params.items() if not p.requires_grad})  # frozen weights: as buffers
    params = {name: p for name, p in params.items() if p.requires_grad}
    base = copy.deepcopy(models[0]).to("meta")
    loss_fn = runs[0].loss_fn
    try:
        with torch.no_grad():
            x = torch.stack([d.train.x[:CHECK_ROWS] for d in datas])
            y = torch.stack([d.train.y[:CHECK_ROWS] for d in datas])
            stacked = _seed_losses(base, loss_fn, 0)(params, buffers, x, y)
            alone = torch.stack([loss_fn(m(xi), yi) for m, xi, yi in zip(models, x, y)])
    except Exception as error:  # noqa: BLE001  vmap's own errors: randomness, data-dependent control flow, in-place on a batch
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"the model cannot run under vmap ({type(error).__name__}: {text[:200]})"
    if not torch.allclose(stacked, alone, rtol=CHECK_RTOL, atol=1e-6, equal_nan=True):
        return (f"the model gives other losses under vmap than alone ({stacked.tolist()[:2]} against "
                f"{alone.tolist()[:2]}, ...)")
    cls = resolve_optimizer_class(first.optimizer)
    optimizer = cls(list(params.values()), lr=first.lr, **optimizer_arguments(first.optimizer, first.opt, rest={}))
    schedule = run_schedule(first, optimizer, runs[0].n_steps, runs[0].per_epoch)
    return Stack(configs, notes, problem, datas, runs, params, buffers, base, optimizer, schedule, shared)


def _seed_losses(base, loss_fn, data_dim):
    """losses(params, buffers, x, y) -> one loss per seed; data_dim None: every seed's batch is the same."""
    def seed_loss(params, buffers, x, y):
        return loss_fn(functional_call(base, (params, buffers), (x,)), y)
    return vmap(seed_loss, in_dims=(0, 0, data_dim, data_dim))


def train_stack(stack: Stack, loggers: list | None = None, *, on_evals: list | None = None,
                progress=None, together=contextlib.nullcontext) -> list[History]:
    """Train the stacked seeds: one History per seed, as `training.train` gives for that seed alone.

    `on_evals[i](step, metrics)` may raise errors.Stop: seed i stops there (`stack.stopped[i]`) and the others go on.
    `together()`: a context entered around what every seed logs at once (a block of steps, an
    evaluation, final metrics); tracked, the writer's, which stores that for all seeds in one transaction.
    """
    configs, problem, datas, runs, optimizer = stack.configs, stack.problem, stack.datas, stack.runs, stack.optimizer
    count, config, device = len(configs), configs[0], configs[0].device
    loggers = loggers or [NullLogger() for _ in configs]
    models = [run.model for run in runs]
    histories = [History(c, data_sizes=d.sizes(), note=note, model=m)
                 for c, d, note, m in zip(configs, datas, stack.notes, models)]
    first_run, loss_fn = runs[0], runs[0].loss_fn
    n_steps, eval_every, per_epoch = first_run.n_steps, first_run.eval_every, first_run.per_epoch
    recorder = StackedRecorder(list(stack.params.values()), count, diverge_factor=config.diverge_factor,
                               trace_weights=problem.traces_weights, update_every=config.update_norm_every)
    switches_weights = has_modes(optimizer)
    live = [True] * count
    all_live = True
    mask = torch.ones(count, dtype=torch.bool, device=device)
    timing = {"eval_s": 0.0, "aside_s": 0.0}  # aside: finishing diverged seeds, not the others' training time
    next_batch = _batch_source(stack)

    def copy_into_models(seeds):
        """Each seed's slice of the stacked weights (at the optimizer's evaluation point) into its own module."""
        if switches_weights:
            optimizer.eval()
        with torch.no_grad():
            for seed in seeds:
                for name, p in models[seed].named_parameters():
                    if name in stack.params:
                        p.copy_(stack.params[name][seed])
                for name, b in models[seed].named_buffers():
                    b.copy_(stack.buffers[name][seed])
        if switches_weights:
            optimizer.train()

    def run_eval(step):
        synchronize(device)
        eval_started = time.perf_counter()
        seeds = [seed for seed in range(count) if live[seed]]
        copy_into_models(seeds)
        with together():
            for seed in seeds:
                metrics = evaluate_run(models[seed], datas[seed], first_run.eval_split, loss_fn, problem.task)
                histories[seed].evals.append({"step": step, **metrics})
                loggers[seed].log(step, metrics)
        timing["eval_s"] += time.perf_counter() - eval_started
        for seed in seeds:
            if on_evals is not None and on_evals[seed] is not None:
                try:
                    on_evals[seed](step, histories[seed].evals[-1])
                except Stop as error:  # this seed is pruned; the others go on
                    stack.stopped[seed] = error
                    stop(seed)

    def stop(seed):
        nonlocal all_live
        live[seed], all_live = False, False
        mask[seed] = False

    def finish_seeds(seeds):
        """Final metrics of `seeds` now, as a separate run takes them when it stops (diverged, or done)."""
        aside_started = time.perf_counter()
        copy_into_models(seeds)
        with together():
            for seed in seeds:
                history = histories[seed]
                history.wall_s = aside_started - started - timing["aside_s"]
                history.eval_s = timing["eval_s"]
                finish(history, models[seed], datas[seed], loss_fn, problem, loggers[seed])
                stop(seed)
        timing["aside_s"] += time.perf_counter() - aside_started

    def record():
        """Every live seed's recorded steps to its history and logger: the seeds that diverged."""
        with together():
            return recorder.flush(histories, loggers, live)

    def flush():
        diverged = record()
        if diverged:
            synchronize(device)
            finish_seeds(diverged)
        return not any(live)

    for model in models:
        model.train()
    if switches_weights:
        optimizer.train()
    synchronize(device)
    started = time.perf_counter()
    try:
        run_eval(0)
        for step in range(1, n_steps + 1):
            if not any(live):
                break
            if config.zero_grad:
                optimizer.zero_grad(set_to_none=True)
            micro_losses = []
            for _ in range(config.accumulate):
                losses_of, x, y = next_batch()
                losses = losses_of(stack.params, stack.buffers, x, y)  # measure: one loss per seed
                counted = losses if all_live else torch.where(mask, losses, 0.0)  # a finished seed's gradient is 0
                # diagnose: each seed's slice of the gradient is its own loss's (scaled as train() scales it)
                (counted.sum() if config.accumulate == 1 else counted.sum() / config.accumulate).backward()
                micro_losses.append(losses.detach())
            recorder.gradients(micro_losses)
            optimizer.step()  # update
            recorder.update(optimizer.param_groups[0]["lr"])
            if stack.schedule is not None and (config.schedule_every == "step" or step % per_epoch == 0):
                stack.schedule.step()

            at_eval = step % eval_every == 0 or step == n_steps
            if (step % SYNC_EVERY == 0 or at_eval) and flush():
                break
            if at_eval:
                run_eval(step)
            if progress is not None:
                progress(step, n_steps)
    except BaseException:
        record()
        raise
    finally:
        synchronize(device)
        ended = time.perf_counter()
    record()
    remaining = [seed for seed in range(count) if live[seed]]
    if remaining:
        started += time.perf_counter() - ended  # the last flush is not training time
        finish_seeds(remaining)
    if switches_weights:  # a saved model is of the evaluation weights, as a separate run leaves it
        optimizer.eval()
    return histories


def _batch_source(stack: Stack):
    """next_batch() -> (losses function, x, y): every seed's next batch, from its own order (and split)."""
    runs, datas = stack.runs, stack.datas
    base, loss_fn = stack.base, runs[0].loss_fn
    whole_split = runs[0].batches.whole_split
    if whole_split and stack.shared_data:  # full batches of one split: the same tensors for every seed
        losses_of = _seed_losses(base, loss_fn, None)
        split = datas[0].train
        return lambda: (losses_of, split.x, split.y)
    losses_of = _seed_losses(base, loss_fn, 0)
    if whole_split:  # each seed's own whole split, stacked once
        x, y = torch.stack([d.train.x for d in datas]), torch.stack([d.train.y for d in datas])
        return lambda: (losses_of, x, y)
    if stack.shared_data:  # one gather for all seeds' rows, from each seed's epoch order
        split, seeds, per_epoch = datas[0].train, len(runs), runs[0].batches.per_epoch
        epoch = {"orders": None, "next": per_epoch}

        def gathered():
            if epoch["next"] == per_epoch:  # (per_epoch, seeds * batch): a step's rows are one row of it
                orders = torch.stack([run.batches.epoch_order() for run in runs], 1)
                epoch["orders"], epoch["next"] = orders.view(per_epoch, -1), 0
            index = epoch["orders"][epoch["next"]]
            epoch["next"] += 1
            x, y = split.x.index_select(0, index), split.y.index_select(0, index)
            return losses_of, x.view(seeds, -1, *x.shape[1:]), y.view(seeds, -1, *y.shape[1:])
        return gathered

    def each_gathered():
        batches = [run.batches.gathered() for run in runs]
        return losses_of, torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])
    return each_gathered
