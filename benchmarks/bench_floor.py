"""optimstudy's instrumented loop against a bare loop on the same minibatches (CPU, one thread).

Sides, interleaved (A B C ... / ... C B A) and timed over the same window (the end of step 1
to the end of the last step, by the wall clock and by this thread's CPU time):
  - bare: zero_grad -> forward -> loss -> backward -> step on optimstudy's own index-gathered
    batches (same seed, so the same minibatches), evaluating at the same steps as optimstudy;
  - optimstudy: optimstudy.train(), recording every step's loss, grad norm, update norm and lr
    (copied to the host every 50 steps), evaluating at the first and last step;
  - bare + previous diagnostics: the bare loop plus the per-step diagnostics optimstudy had
    before diagnostics.StepRecorder (one norm per tensor, stack, copy_/sub_ per tensor), the
    "before" of this change measured in the same run;
  - bare + StepRecorder: the bare loop plus the recorder alone (no flush/eval machinery);
  - floor: the bare loop on one fixed batch (no data work), and optimstudy with its default
    evaluations (each epoch), for information.
With --captured (and in a full run) one more: optimstudy in captured mode (torch.compile),
for information: on a CPU it is slower than eager (compiled C++ kernels for small ops, and
no CUDA graphs), so its target is on a GPU (bench_gpu.py).

    python benchmarks/bench_floor.py [--quick] [--captured]
"""
import time

import torch
import torch.nn.functional as F

from common import comparison, interleave, machine, median, options, say, spread, write_result

NAME = "floor"
TARGET = 1.10  # the instrumented loop within 1.10x of the bare loop on the same minibatches
BATCH, LR, SEED = 64, 0.05, 0


class Window:
    """Wall and thread-CPU seconds from the end of step 1 to the end of the last step, and each
    step's wall seconds (a progress hook, called after every step on every side)."""

    def __init__(self):
        self.marks, self.ends = {}, []

    def __call__(self, step, total):
        self.ends.append(time.perf_counter())
        if step == 1 or step == total:
            self.marks[step == 1] = (self.ends[-1], time.thread_time())

    def result(self, **extra) -> dict:
        (wall_end, cpu_end), (wall_start, cpu_start) = self.marks[False], self.marks[True]
        steps_s = [b - a for a, b in zip(self.ends, self.ends[1:])]
        return {"wall_s": wall_end - wall_start, "cpu_s": cpu_end - cpu_start, "steps_s": steps_s, **extra}


def fastest_steps_s(runs: list[list[float]]) -> float:
    """The sum over step indices of the fastest repeat of that step: robust to other load.

    Every repeat of a side runs the same steps (same batches, flushes and evaluations at the
    same indices), so a step slowed by another process in one repeat is fast in another; the
    systematic costs (a flush every 50 steps) stay in, unlike in a median of step times.
    """
    return sum(min(durations) for durations in zip(*runs))


def bare_loop(data, steps: int, eval_at: set, batches=None, diagnostics=None) -> dict:
    """The bare loop on optimstudy's batches (or `batches`), evaluating at `eval_at`, plus `diagnostics`."""
    from optimstudy.data import Batches
    from optimstudy.losses import cross_entropy
    from optimstudy.problems import mlp
    from optimstudy.training import evaluate

    torch.manual_seed(SEED)
    model = mlp()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)
    batches = batches or Batches(data.train, BATCH, torch.Generator().manual_seed(SEED))
    before, after = diagnostics(params) if diagnostics else (None, None)
    window = Window()
    model.train()
    evaluate(model, data.val, cross_entropy, "classification")
    for step in range(1, steps + 1):
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if before is not None:
            before(loss)
        optimizer.step()
        if after is not None:
            after(optimizer.param_groups[0]["lr"], step)
        if step in eval_at:
            evaluate(model, data.val, cross_entropy, "classification")
        window(step, steps)
    return window.result()


def previous_diagnostics(params):
    """What train() did per step before StepRecorder, without its flush (kept here as the 'before')."""
    saved = [p.detach().clone() for p in params]
    pending = {"train_loss": [], "grad_norm": [], "update_norm": [], "lr": []}

    def norm(tensors):
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))

    def before(loss):
        with torch.no_grad():
            pending["grad_norm"].append(norm([p.grad for p in params if p.grad is not None]))
            for kept, p in zip(saved, params):
                kept.copy_(p)
        pending["train_loss"].append(loss.detach())

    def after(lr, step):
        pending["lr"].append(lr)
        with torch.no_grad():
            for kept, p in zip(saved, params):
                kept.sub_(p)
            pending["update_norm"].append(norm(saved))
        if step % 50 == 0:
            for values in pending.values():
                values.clear()

    return before, after


def recorder_diagnostics(params):
    """The StepRecorder alone, flushed every 50 steps into a throwaway history."""
    from optimstudy.diagnostics import StepRecorder
    from optimstudy.loggers import NullLogger
    from optimstudy.training import History, SYNC_EVERY

    recorder, history, logger = StepRecorder(params, diverge_factor=100.0), History(config=None), NullLogger()

    def before(loss):
        recorder.gradients([loss.detach()])

    def after(lr, step):
        recorder.update(lr)
        if step % SYNC_EVERY == 0:
            recorder.flush(history, logger)

    return before, after


def per_call_us(function, calls: int) -> float:
    function()
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return 1e6 * (time.perf_counter() - started) / calls


def extras_microbenchmark(data, calls: int) -> dict:
    """µs per call of each per-step diagnostic, previous way and StepRecorder's way, each alone."""
    from optimstudy.diagnostics import StepRecorder
    from optimstudy.problems import mlp

    torch.manual_seed(SEED)
    model = mlp()
    params = list(model.parameters())
    F.cross_entropy(model(data.train.x[:BATCH]), data.train.y[:BATCH]).backward()
    grads = [p.grad for p in params]
    saved = [p.detach().clone() for p in params]
    recorder = StepRecorder(params, diverge_factor=100.0)
    loss = torch.tensor(1.0)

    def norm(tensors):
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))

    def copy_and_subtract():
        with torch.no_grad():
            for kept, p in zip(saved, params):
                kept.copy_(p)
            for kept, p in zip(saved, params):
                kept.sub_(p)

    def record_step():
        recorder.gradients([loss])
        recorder.update(LR)
        if len(recorder.losses) > 1000:
            for recorded in (recorder.losses, recorder.grad_norms, recorder.update_squares, recorder.lrs):
                recorded.clear()

    return {
        "previous: global_norm(grads) (a norm per tensor, stack, norm)": per_call_us(lambda: norm(grads), calls),
        "previous: copy_ then sub_ of every weight": per_call_us(copy_and_subtract, calls),
        "previous: global_norm(update)": per_call_us(lambda: norm(saved), calls),
        "now: _foreach_norm(grads)": per_call_us(lambda: torch._foreach_norm(grads), calls),
        "now: _foreach_sub_ + dot + _foreach_copy_ (the update)": per_call_us(
            lambda: recorder._update_square(recorder.previous, recorder.previous_views, recorder.weights), calls),
        "now: a whole step's recording (gradients() + update())": per_call_us(record_step, calls),
    }


def main(argv=None) -> dict:
    parser = options(NAME, __doc__.splitlines()[0])
    parser.add_argument("--captured", action="store_true", help="also time captured mode (compiles for ~10-40 s)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    from optimstudy import RunConfig, train
    from optimstudy.runner import load_data
    from optimstudy.training import total_steps

    torch_threads = args.threads or 1  # the setting: one thread
    torch.set_num_threads(torch_threads)
    epochs, repeats = (3, 3) if args.quick else (5, 7)
    base = dict(problem="mnist_mlp", optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, epochs=epochs,
                threads=torch_threads)
    data = load_data(RunConfig(**base).resolved(), args.data_dir)
    steps = total_steps(RunConfig(**base).resolved(), len(data.train))
    config = RunConfig(**base, eval_every=steps).resolved()  # evaluations at steps 0 and `steps`
    default_eval = RunConfig(**base).resolved()  # each epoch, at most 10 a run
    fixed = data.train.x[:BATCH].clone(), data.train.y[:BATCH].clone()
    say(f"{NAME}: {steps} steps ({epochs} epochs of {len(data.train)} images) per side, {repeats} repeats, "
        f"{torch_threads} torch thread(s)")

    def optimstudy_side(run_config):
        def side():
            window = Window()
            history = train(run_config, data=data, progress=window)
            return window.result(evaluations=len(history.evals))
        return side

    class Fixed:
        def __next__(self):
            return fixed

    sides = {
        "bare": lambda: bare_loop(data, steps, {steps}),
        "optimstudy": optimstudy_side(config),
        "bare + previous diagnostics": lambda: bare_loop(data, steps, {steps}, diagnostics=previous_diagnostics),
        "bare + StepRecorder": lambda: bare_loop(data, steps, {steps}, diagnostics=recorder_diagnostics),
        "optimstudy, evaluating each epoch": optimstudy_side(default_eval),
        "floor (one fixed batch)": lambda: bare_loop(data, steps, set(), batches=Fixed()),
    }
    if args.captured or not args.quick:
        sides["optimstudy captured (torch.compile)"] = optimstudy_side(RunConfig(**base, eval_every=steps,
                                                                                  compile=True).resolved())
    times = interleave(sides, repeats)
    whole_run = {side: median(values["wall_s"]) for side, values in times.items()}
    wall = {side: fastest_steps_s(values["steps_s"]) for side, values in times.items()}
    cpu = {side: median(values["cpu_s"]) for side, values in times.items()}
    ms = {side: 1000 * value / (steps - 1) for side, value in wall.items()}

    def ratio(side, against="bare"):
        return wall[side] / wall[against]

    def spread_of(side, against="bare"):  # whole runs: the ratio of medians, and repeat by repeat
        pairs = [a / b for a, b in zip(times[side]["wall_s"], times[against]["wall_s"])]
        return f"whole runs {whole_run[side] / whole_run[against]:.3f}× (repeats {min(pairs):.2f}-{max(pairs):.2f})"

    rows = [
        comparison("CPU loop: optimstudy (loss, grad norm, update norm, lr every step) / bare loop, same minibatches",
                   ratio("optimstudy"), TARGET, at_least=False, digits=3,
                   context=f"{ms['optimstudy']:.3f} vs {ms['bare']:.3f} ms/step, fastest repeat per step; "
                           f"{spread_of('optimstudy')}; "
                           f"thread CPU time {cpu['optimstudy'] / cpu['bare']:.3f}×; MNIST MLP, batch 64, 1 thread"),
        comparison("CPU loop, before this change: bare + previous diagnostics / bare",
                   ratio("bare + previous diagnostics"),
                   None, at_least=False, digits=3,
                   context=f"now bare + StepRecorder {ratio('bare + StepRecorder'):.3f}×"),
        comparison("CPU loop: optimstudy evaluating each epoch (its default) / bare loop without those evaluations",
                   ratio("optimstudy, evaluating each epoch"), None, at_least=False, digits=3,
                   context=f"{times['optimstudy, evaluating each epoch']['evaluations'][0]} evaluations of "
                           f"{len(data.val)} images"),
        comparison("CPU loop: optimstudy / compute floor (bare loop on one fixed batch)",
                   wall["optimstudy"] / wall["floor (one fixed batch)"], None, at_least=False, digits=3,
                   context=f"indexed batches alone {wall['bare'] / wall['floor (one fixed batch)']:.3f}×"),
    ]
    if "optimstudy captured (torch.compile)" in times:
        rows.append(comparison(
            "CPU captured mode (torch.compile, reduce-overhead) / bare eager loop",
            ratio("optimstudy captured (torch.compile)"),
            None, at_least=False, digits=3,
            context=f"{ms['optimstudy captured (torch.compile)']:.3f} ms/step after compiling; the target is on a GPU"))
    extras = extras_microbenchmark(data, 300 if args.quick else 2000)
    measurements = {
        "steps": steps, "timed_steps": steps - 1, "repeats": repeats,
        "ms_per_step (sum of the fastest repeat of each step)": {side: round(value, 4) for side, value in ms.items()},
        "whole_run_ratios_to_bare (ratio of medians)": {side: round(whole_run[side] / whole_run["bare"], 4)
                                                        for side in times},
        "ratios_to_bare (fastest repeat per step)": {side: round(ratio(side), 4) for side in times},
        "thread_cpu_ratios_to_bare": {side: round(cpu[side] / cpu["bare"], 4) for side in times},
        "wall_s": {side: spread(values["wall_s"]) for side, values in times.items()},
        "thread_cpu_s": {side: spread(values["cpu_s"]) for side, values in times.items()},
        "extras_us_per_call": {k: round(v, 2) for k, v in extras.items()},
    }
    settings = {"problem": "mnist_mlp", "optimizer": "SGD", "lr": LR, "batch_size": BATCH, "seed": SEED,
                "device": "cpu", "torch_threads": torch_threads, "epochs": epochs,
                "window": "end of step 1 to end of the last step (progress hook), wall clock and thread CPU time",
                "measured": "per side, the sum over steps of the fastest of the repeats of that step (robust to "
                            "other processes on a shared machine); whole-run medians beside it",
                "order": "interleaved A B C ... then ... C B A, each side once untimed first"}
    result = write_result(NAME, args, rows, settings, measurements, started, info)
    for name, us in extras.items():
        print(f"    {name}: {us:.1f} µs per call")
    return result


if __name__ == "__main__":
    main()
