"""Per-step diagnostics: loss, gradient norm, update norm and lr, kept on the device until a flush.

    recorder = StepRecorder(params, diverge_factor=100.0, update_every=10)
    loss.backward()
    recorder.gradients([loss.detach()])     # before the step: the loss, the gradient norm (and on a
    optimizer.step()                         #   measured step, a copy of the weights)
    recorder.update(optimizer.param_groups[0]["lr"])   # after it: the lr (and how far the weights moved)
    if recorder.flush(history, logger):      # every SYNC_EVERY steps: one host copy
        ...                                  # the run diverged

Why it is built this way: a step's recording is a few dispatched ops and memory passes over the
weights, so each one counts against a small model's step. An exact update norm needs a copy of
the weights before the step and a pass reading both after it, which no eager formulation makes
cheap, so it is measured every `update_every`-th step (RunConfig.update_norm_every, default 10;
1 = every step); loss, gradient norm and lr are every step's.
- The gradient norm is one `torch._foreach_norm` (one fused kernel on CUDA); the per-tensor
  norms are kept and combined into the global norm at the flush, so a step adds no stack.
- The weights from before a measured step live in one flat buffer: `_foreach_copy_` fills it
  just before the step, one `_foreach_sub_` after it turns it into minus the update and one
  `dot` gives its squared norm, the cheapest of the formulations compared. Re-pointing the
  model's weights into one flat buffer would save one more op but changes the storage of the
  user's model: not done.
- A step's results are 0-d tensors appended to Python lists: writing each into a preallocated
  buffer by index would cost a dispatch (a kernel launch on a GPU). The lists are stacked once
  per flush and copied to the host in a single transfer, so a GPU run has no host sync per step.
The measurements behind each choice: docs/performance.md, "Why the code is built as it is".
In captured mode (`capture`, RunConfig(compile=True)) the forward, the optimizer step and the
three measuring functions are compiled; what the recorder keeps of their outputs is cloned,
because CUDA graphs reuse output memory on every replay.
"""
import math

import torch

from optimstudy.compat.torch import foreach_copy_, foreach_norm, foreach_sub_

CAPTURE_MODE = "reduce-overhead"  # CUDA graphs on a GPU; on a CPU, inductor's generated C++ kernels


def capture(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Captured mode: returns the compiled forward and compiles `optimizer.step` in place.

    The backward is compiled with the forward (AOTAutograd). The lr becomes a 0-d tensor so
    that a schedule changes its value, not the compiled graph (a float lr would recompile
    at every change). The first steps take seconds to tens of seconds to compile.
    """
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float64)
    optimizer.step = torch.compile(optimizer.step, mode=CAPTURE_MODE)
    return torch.compile(model, mode=CAPTURE_MODE)


class StepRecorder:
    """Records one row of diagnostics per optimizer step; `flush` moves them to the host.

    The update norm is measured at every `update_every`-th step (steps k, 2k, ...): the weights
    are copied just before such a step and compared just after it. The other steps' update_norm
    is NaN in the history and absent from the logger; loss, gradient norm and lr are every step's.
    """

    def __init__(self, params, *, diverge_factor: float, trace_weights: bool = False, captured: bool = False,
                 update_every: int = 1):
        self.params = list(params)
        self.weights = [p.detach() for p in self.params]  # aliases: they see every in-place update
        self.diverge_factor = diverge_factor
        self.trace_weights = trace_weights
        self.update_every = update_every
        self.finished = 0  # steps whose update() has run: the next step is finished + 1
        first = self.weights[0]
        self.previous = torch.empty(sum(w.numel() for w in self.weights), dtype=first.dtype, device=first.device)
        self.previous_views = list(torch.split(self.previous, [w.numel() for w in self.weights]))
        self.previous_views = [view.view_as(w) for view, w in zip(self.previous_views, self.weights)]
        self.first_loss: float | None = None
        self.losses: list[torch.Tensor] = []
        self.grad_norms: list[list[torch.Tensor]] = []  # per step: one norm per gradient tensor
        self.update_squares: list[torch.Tensor] = []  # per measured step: the squared norm of the update
        self.update_steps: list[int] = []  # the steps they belong to
        self.lrs: list = []
        self.weight_rows: list[torch.Tensor] = []
        self.captured = captured
        self._grad_norms, self._snapshot, self._update_square = _gradient_norms, _snapshot, _update_square
        if captured:
            self._grad_norms = torch.compile(_stacked_gradient_norms, mode=CAPTURE_MODE)
            self._snapshot = torch.compile(_snapshot_captured, mode=CAPTURE_MODE)
            self._update_square = torch.compile(_update_square_captured, mode=CAPTURE_MODE)

    def measures_update(self) -> bool:
        """Whether the step about to run (finished + 1) has its update norm measured."""
        return (self.finished + 1) % self.update_every == 0

    def gradients(self, micro_losses: list[torch.Tensor]) -> None:
        """Before the step: this step's loss (the mean over its micro-batches) and gradient norms,
        and on a measured step the weights it starts from."""
        loss = micro_losses[0] if len(micro_losses) == 1 else torch.stack(micro_losses).mean()
        self.losses.append(loss.clone() if self.captured else loss)
        grads = [p.grad for p in self.params if p.grad is not None]
        norms = self._grad_norms(grads) if grads else []
        self.grad_norms.append(norms.clone().unbind() if self.captured and grads else norms)  # one copy
        if self.measures_update():
            self._snapshot(self.previous, self.previous_views, self.weights)

    def grad_norm(self) -> torch.Tensor:
        """The global gradient norm of the last step, as a 0-d tensor on the device (for clipping)."""
        norms = self.grad_norms[-1]
        if not norms:
            return torch.zeros((), device=self.previous.device)
        return torch.linalg.vector_norm(torch.stack(norms))

    def update(self, lr) -> None:
        """After the step: the norm of what it changed (on a measured step), and the lr it used."""
        if self.measures_update():
            square = self._update_square(self.previous, self.previous_views, self.weights)
            self.update_squares.append(square.clone() if self.captured else square)
            self.update_steps.append(self.finished + 1)
        self.finished += 1
        self.lrs.append(lr.clone() if isinstance(lr, torch.Tensor) else lr)  # a schedule changes a tensor lr in place
        if self.trace_weights:  # toy problems of a few weights: one small copy a step
            self.weight_rows.append(torch.cat([w.reshape(-1) for w in self.weights]))
        if self.captured:
            torch.compiler.cudagraph_mark_step_begin()  # all kept outputs are copies: the next replay may reuse memory

    def flush(self, history, logger) -> bool:
        """Copy the recorded steps to the host in one transfer, into `history` and `logger`.

        Returns True when the run diverged: a loss not finite, or |loss| > diverge_factor *
        max(|first loss|, 1). A diverged run keeps its steps up to and including that one.
        """
        count = len(self.lrs)  # finished steps; a step interrupted before its update() is dropped
        if count == 0:
            return False
        update_norms = (torch.stack(self.update_squares).double().sqrt() if self.update_squares
                        else torch.zeros(0, dtype=torch.float64, device=self.previous.device))
        losses_and_norms = torch.cat([
            torch.stack(self.losses[:count]).double(),
            _global_norms(self.grad_norms[:count], self.previous.device),
            update_norms,
        ]).tolist()  # the one host sync
        columns = {"train_loss": losses_and_norms[:count], "grad_norm": losses_and_norms[count:2 * count]}
        update_norms = dict(zip(self.update_steps, losses_and_norms[2 * count:]))
        lrs = self.lrs[:count]
        columns["lr"] = (torch.stack(lrs).double().tolist() if isinstance(lrs[0], torch.Tensor)  # one transfer
                         else [float(lr) for lr in lrs])
        if self.trace_weights:
            rows = torch.stack(self.weight_rows[:count]).double().tolist()
            columns.update({f"w{i + 1}": list(column) for i, column in enumerate(zip(*rows))})
        for recorded in (self.losses, self.grad_norms, self.lrs, self.weight_rows):
            del recorded[:count]
        self.update_squares.clear()
        self.update_steps.clear()

        if self.first_loss is None:
            self.first_loss = columns["train_loss"][0]
        return record_block(history, logger, columns, update_norms, self.finished - count + 1,
                            self.diverge_factor * max(abs(self.first_loss), 1.0))


def record_block(history, logger, columns: dict, update_norms: dict, first_step: int, bound: float) -> bool:
    """One run's block of steps on the host into its history and logger; True when the run diverged
    in it (a loss not finite or beyond `bound`): the block then ends at that step."""
    losses = columns["train_loss"]
    count = len(losses)
    bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss) or abs(loss) > bound), None)
    kept = count if bad is None else bad + 1  # a diverged run ends at the step where it diverged
    steps = list(range(first_step, first_step + kept))
    columns = {name: values[:kept] for name, values in columns.items()}
    update_norms = {step: value for step, value in update_norms.items() if step < first_step + kept}
    history.steps.extend(steps)
    for name, values in columns.items():
        history.step_metrics.setdefault(name, []).extend(values)
    # update_norm stays aligned with the steps: NaN where the step's update was not measured
    history.step_metrics.setdefault("update_norm", []).extend(update_norms.get(step, math.nan) for step in steps)
    logger.log_steps(steps, columns)
    if update_norms:
        logger.log_steps(list(update_norms), {"update_norm": list(update_norms.values())})
    if bad is not None:
        history.diverged, history.diverged_at_step = True, steps[-1]
    return bad is not None


class StackedRecorder:
    """StepRecorder for stacked seeds (run/stacked.py): every weight has a leading seed axis, and each
    seed's row of diagnostics is what StepRecorder records for that seed's run alone (the same
    cadence, the same divergence rule), computed for all seeds at once.

    `flush(histories, loggers, live)` writes the live seeds' blocks and returns the seeds that
    diverged in this block; their later steps are never recorded.
    """

    def __init__(self, params, seeds: int, *, diverge_factor: float, trace_weights: bool = False,
                 update_every: int = 1):
        self.params, self.seeds = list(params), seeds
        self.weights = [p.detach() for p in self.params]
        self.diverge_factor, self.trace_weights, self.update_every = diverge_factor, trace_weights, update_every
        self.finished = 0
        sizes = [w[0].numel() for w in self.weights]
        first = self.weights[0]
        self.previous = torch.empty(seeds, sum(sizes), dtype=first.dtype, device=first.device)
        self.previous_views = [view.view_as(w) for view, w in zip(torch.split(self.previous, sizes, dim=1),
                                                                     self.weights)]
        self.first_losses: list[float | None] = [None] * seeds
        self.losses: list[torch.Tensor] = []  # per step: (seeds,)
        self.grad_norms: list[torch.Tensor] = []  # per step: (tensors, seeds), each gradient tensor's norm per seed
        self.update_squares: list[torch.Tensor] = []
        self.update_steps: list[int] = []
        self.lrs: list = []
        self.weight_rows: list[torch.Tensor] = []

    def measures_update(self) -> bool:
        return (self.finished + 1) % self.update_every == 0

    def gradients(self, micro_losses: list[torch.Tensor]) -> None:
        self.losses.append(micro_losses[0] if len(micro_losses) == 1 else torch.stack(micro_losses).mean(0))
        grads = [p.grad.reshape(self.seeds, -1) for p in self.params if p.grad is not None]
        if grads:  # per tensor and seed, as StepRecorder's per-tensor norms, summed in float64 at the flush
            self.grad_norms.append(torch.stack([torch.linalg.vector_norm(g, dim=1) for g in grads]))
        else:
            self.grad_norms.append(torch.zeros(1, self.seeds, device=self.previous.device))
        if self.measures_update():
            foreach_copy_(self.previous_views, self.weights)

    def update(self, lr) -> None:
        if self.measures_update():
            foreach_sub_(self.previous_views, self.weights)
            # one dot per seed, StepRecorder's own op: a float32 sum of squares depends on its summation
            # order (a sum over the seed axis read 4e-5 apart from `dot` on Lion's equal-sized updates)
            self.update_squares.append(torch.stack([torch.dot(row, row) for row in self.previous]))
            self.update_steps.append(self.finished + 1)
        self.finished += 1
        self.lrs.append(lr.clone() if isinstance(lr, torch.Tensor) else lr)
        if self.trace_weights:
            self.weight_rows.append(torch.cat([w.reshape(self.seeds, -1) for w in self.weights], 1))

    def flush(self, histories: list, loggers: list, live: list[bool]) -> list[int]:
        count = len(self.lrs)
        if count == 0:
            return []
        device = self.previous.device
        update_norms = (torch.stack(self.update_squares).double().sqrt() if self.update_squares
                        else torch.zeros(0, self.seeds, dtype=torch.float64, device=device))
        grad_norms = torch.stack(self.grad_norms[:count]).double().square().sum(1).sqrt()  # (steps, seeds)
        # (steps, seeds) each; one host sync for the three
        losses, grad_norms, update_norms = torch.cat([torch.stack(self.losses[:count]).double(), grad_norms,
                                                      update_norms]).split([count, count, len(self.update_steps)])
        losses, grad_norms, update_norms = losses.T.tolist(), grad_norms.T.tolist(), update_norms.T.tolist()
        lrs = self.lrs[:count]
        lrs = (torch.stack(lrs).double().tolist() if isinstance(lrs[0], torch.Tensor) else [float(lr) for lr in lrs])
        rows = torch.stack(self.weight_rows[:count]).double().tolist() if self.trace_weights else None
        first_step = self.finished - count + 1
        update_steps = list(self.update_steps)
        for recorded in (self.losses, self.grad_norms, self.lrs, self.weight_rows):
            del recorded[:count]
        self.update_squares.clear()
        self.update_steps.clear()

        diverged = []
        for seed in range(self.seeds):
            if not live[seed]:
                continue
            columns = {"train_loss": losses[seed], "grad_norm": grad_norms[seed], "lr": lrs}
            if rows is not None:
                columns.update({f"w{i + 1}": list(column) for i, column in
                                enumerate(zip(*(step_rows[seed] for step_rows in rows)))})
            if self.first_losses[seed] is None:
                self.first_losses[seed] = columns["train_loss"][0]
            bound = self.diverge_factor * max(abs(self.first_losses[seed]), 1.0)
            if record_block(histories[seed], loggers[seed], columns, dict(zip(update_steps, update_norms[seed])),
                            first_step, bound):
                diverged.append(seed)
        return diverged


def _gradient_norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return foreach_norm(grads)


def _stacked_gradient_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(foreach_norm(grads))


def _snapshot(previous: torch.Tensor, previous_views: list[torch.Tensor], weights: list[torch.Tensor]) -> None:
    """`previous` := the weights (before a measured step)."""
    foreach_copy_(previous_views, weights)


def _update_square(previous: torch.Tensor, previous_views: list[torch.Tensor], weights: list[torch.Tensor]):
    """||weights before - weights after||^2, from the snapshot before the step (which it overwrites)."""
    foreach_sub_(previous_views, weights)  # previous = minus this step's update
    return torch.dot(previous, previous)


def _snapshot_captured(previous: torch.Tensor, previous_views, weights: list[torch.Tensor]) -> None:
    """The same for the compiler: one flat copy it fuses into a single kernel (inductor fails on
    _foreach ops into views of the buffer for a CNN's 4-d weights, torch 2.14)."""
    previous.copy_(torch.cat([w.reshape(-1) for w in weights]))


def _update_square_captured(previous: torch.Tensor, previous_views, weights: list[torch.Tensor]):
    delta = previous - torch.cat([w.reshape(-1) for w in weights])
    return torch.dot(delta, delta)


def _global_norms(per_step: list[list[torch.Tensor]], device) -> torch.Tensor:
    """Each step's global norm from its per-tensor norms: sqrt(sum of squares), in float64."""
    lengths = [len(norms) for norms in per_step]
    if not sum(lengths):
        return torch.zeros(len(per_step), dtype=torch.float64, device=device)
    squares = torch.stack([n for norms in per_step for n in norms]).double().square()
    if min(lengths) == max(lengths):  # every step saw the same gradients: no index to copy to the device
        return squares.view(len(per_step), lengths[0]).sum(1).sqrt()
    owner = torch.repeat_interleave(torch.arange(len(per_step)), torch.tensor(lengths)).to(device)
    return torch.zeros(len(per_step), dtype=torch.float64, device=device).index_add_(0, owner, squares).sqrt()
