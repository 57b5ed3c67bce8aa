"""Per-step diagnostics: loss, gradient norm, update norm and lr, kept on the device until a flush.

    recorder = StepRecorder(params, diverge_factor=100.0)
    loss.backward()
    recorder.gradients([loss.detach()])     # before the step: the loss and the gradient norm
    optimizer.step()
    recorder.update(optimizer.param_groups[0]["lr"])   # after it: how far the weights moved
    if recorder.flush(history, logger):      # every SYNC_EVERY steps: one host copy
        ...                                  # the run diverged

Why it is built this way (one CPU thread, MNIST MLP, batch 64, a 0.6 ms step; measured in the
loop by benchmarks/bench_floor.py): a step's recording is four dispatched ops (25-40 us of
dispatch alone: measured with 2-element tensors) and memory passes over the weights (400 KB
for the MLP), 10-15 us each alone and 15-30 us inside the loop, where the weights, gradients
and saved copy no longer fit the core's cache together. An exact update norm needs at least
the gradient pass, a copy of the weights before the step and a pass reading both after it;
in eager PyTorch this is the least found (about 0.1 ms a step in all, ~1.17x the bare loop):
- The gradient norm is one `torch._foreach_norm` (one fused kernel on CUDA); the per-tensor
  norms are kept and combined into the global norm at the flush, so a step adds no stack.
- The weights from before the step live in one flat buffer: after the step one `_foreach_sub_`
  turns it into minus the update, one `dot` gives its squared norm (BLAS: 8 us against
  vector_norm's 12 us alone), and one `_foreach_copy_` makes it the weights before the next
  step. Measured in the loop: 48-58 us, against 72 us for the copy/subtract/norm per tensor
  it replaces; torch.dist (one pass, no write) 84-110 us; vector_norm instead of dot +5-14 us.
  Re-pointing the model's weights into one flat buffer saves ~10 us more (one op instead of
  a foreach over views) but changes the storage of the user's model: not done.
- A step's results are 0-d tensors appended to Python lists (0.1 us): writing each into a
  preallocated buffer by index costs a dispatch (2-3 us on CPU, a kernel launch on a GPU).
  The lists are stacked once per flush and copied to the host in a single transfer, so a
  GPU run has no host sync per step.
In captured mode (`capture`, RunConfig(compile=True)) the forward, the optimizer step and the
two measuring functions are compiled; what the recorder keeps of their outputs is cloned,
because CUDA graphs reuse output memory on every replay.
"""
import math

import torch

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
    """Records one row of diagnostics per optimizer step; `flush` moves them to the host."""

    def __init__(self, params, *, diverge_factor: float, trace_weights: bool = False, captured: bool = False):
        self.params = list(params)
        self.weights = [p.detach() for p in self.params]  # aliases: they see every in-place update
        self.diverge_factor = diverge_factor
        self.trace_weights = trace_weights
        first = self.weights[0]
        self.previous = torch.empty(sum(w.numel() for w in self.weights), dtype=first.dtype, device=first.device)
        self.previous_views = list(torch.split(self.previous, [w.numel() for w in self.weights]))
        self.previous_views = [view.view_as(w) for view, w in zip(self.previous_views, self.weights)]
        torch._foreach_copy_(self.previous_views, self.weights)
        self.first_loss: float | None = None
        self.losses: list[torch.Tensor] = []
        self.grad_norms: list[list[torch.Tensor]] = []  # per step: one norm per gradient tensor
        self.update_squares: list[torch.Tensor] = []  # per step: the squared norm of the update
        self.lrs: list = []
        self.weight_rows: list[torch.Tensor] = []
        self.captured = captured
        self._grad_norms, self._update_square = _gradient_norms, _update_square
        if captured:
            self._grad_norms = torch.compile(_stacked_gradient_norms, mode=CAPTURE_MODE)
            self._update_square = torch.compile(_update_square_captured, mode=CAPTURE_MODE)

    def gradients(self, micro_losses: list[torch.Tensor]) -> None:
        """Before the step: this step's loss (the mean over its micro-batches) and gradient norms."""
        loss = micro_losses[0] if len(micro_losses) == 1 else torch.stack(micro_losses).mean()
        self.losses.append(loss.clone() if self.captured else loss)
        grads = [p.grad for p in self.params if p.grad is not None]
        norms = self._grad_norms(grads) if grads else []
        self.grad_norms.append(norms.clone().unbind() if self.captured and grads else norms)  # one copy

    def grad_norm(self) -> torch.Tensor:
        """The global gradient norm of the last step, as a 0-d tensor on the device (for clipping)."""
        norms = self.grad_norms[-1]
        if not norms:
            return torch.zeros((), device=self.previous.device)
        return torch.linalg.vector_norm(torch.stack(norms))

    def update(self, lr) -> None:
        """After the step: the norm of what it changed, and the lr it used."""
        square = self._update_square(self.previous, self.previous_views, self.weights)
        self.update_squares.append(square.clone() if self.captured else square)
        self.lrs.append(lr.clone() if isinstance(lr, torch.Tensor) else lr)  # a schedule changes a tensor lr in place
        if self.trace_weights:
            self.weight_rows.append(self.previous.clone())
        if self.captured:
            torch.compiler.cudagraph_mark_step_begin()  # all kept outputs are copies: the next replay may reuse memory

    def flush(self, history, logger) -> bool:
        """Copy the recorded steps to the host in one transfer, into `history` and `logger`.

        Returns True when the run diverged: a loss not finite, or |loss| > diverge_factor *
        max(|first loss|, 1). A diverged run keeps its steps up to and including that one.
        """
        count = min(len(self.losses), len(self.update_squares))  # short only when interrupted mid-step
        if count == 0:
            return False
        table = torch.stack([
            torch.stack(self.losses[:count]).double(),
            _global_norms(self.grad_norms[:count], self.previous.device),
            torch.stack(self.update_squares[:count]).double().sqrt(),
        ])
        columns = dict(zip(("train_loss", "grad_norm", "update_norm"), table.tolist()))  # the one host sync
        lrs = self.lrs[:count]
        columns["lr"] = (torch.stack(lrs).double().tolist() if isinstance(lrs[0], torch.Tensor)  # one transfer
                         else [float(lr) for lr in lrs])
        if self.trace_weights:
            rows = torch.stack(self.weight_rows[:count]).double().tolist()
            columns.update({f"w{i + 1}": list(column) for i, column in enumerate(zip(*rows))})
        for recorded in (self.losses, self.grad_norms, self.update_squares, self.lrs, self.weight_rows):
            del recorded[:count]

        losses = columns["train_loss"]
        if self.first_loss is None:
            self.first_loss = losses[0]
        bound = self.diverge_factor * max(abs(self.first_loss), 1.0)
        bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss) or abs(loss) > bound), None)
        kept = count if bad is None else bad + 1  # a diverged run ends at the step where it diverged
        first_step = history.steps[-1] + 1 if history.steps else 1
        steps = list(range(first_step, first_step + kept))
        columns = {name: values[:kept] for name, values in columns.items()}
        history.steps.extend(steps)
        for name, values in columns.items():
            history.step_metrics.setdefault(name, []).extend(values)
        logger.log_steps(steps, columns)
        if bad is not None:
            history.diverged, history.diverged_at_step = True, steps[-1]
        return bad is not None


def _gradient_norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return torch._foreach_norm(grads)


def _stacked_gradient_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(grads))


def _update_square(previous: torch.Tensor, previous_views: list[torch.Tensor], weights: list[torch.Tensor]):
    """||weights before - weights after||^2; leaves `previous` holding the weights after."""
    torch._foreach_sub_(previous_views, weights)  # previous = minus this step's update
    square = torch.dot(previous, previous)
    torch._foreach_copy_(previous_views, weights)
    return square


def _update_square_captured(previous: torch.Tensor, previous_views, weights: list[torch.Tensor]):
    """The same for the compiler: one flat subtraction it fuses into a single kernel (inductor
    fails on _foreach_sub_ into views of the buffer for a CNN's 4-d weights, torch 2.14)."""
    flat = torch.cat([w.reshape(-1) for w in weights])
    delta = previous - flat
    previous.copy_(flat)
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
