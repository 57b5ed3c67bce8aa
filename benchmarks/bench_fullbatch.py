"""Full-batch training: optimstudy's loop against a bare full-batch loop (CPU, 400 x 3,000 linear regression).

The problem of the issue that measured it: 400 training rows of 3,000 features, a linear model,
MSE, SGD, 300 steps, no validation split (val_fraction = 0), every step on the whole split.
Sides, interleaved (A B C ... / ... C B A) and timed over the same window as bench_floor.py
(the end of step 1 to the end of the last step):
  - bare: zero_grad -> forward -> loss -> backward -> step on the split's tensors, written here
    independently of optimstudy, evaluating the training loss at the first and last step;
  - optimstudy: optimstudy.train() with its defaults (every step's loss, grad norm and lr, every
    10th step's update norm recorded; its default evaluations over the whole training split);
  - the same two loops with a 3000-8-1 tanh MLP, for information: a ~1.6 ms step, about as long as
    the bare step the issue measured (1.5 ms);
  - bare + StepRecorder, for information: the bare loop plus optimstudy's per-step recording alone;
  - optimstudy recording the update norm every step (update_norm_every = 1), for information;
  - before, for information: optimstudy with the path every full batch took before (the whole
    split gathered in a fresh order each step, an evaluation each step: the old default), and
    the gather alone (default evaluations), so the two costs are seen apart.

    python benchmarks/bench_fullbatch.py [--quick]
"""
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from bench_floor import Window, fastest_steps_s, recorder_diagnostics
from common import comparison, interleave, machine, median, options, say, spread, threads, write_result

from optimstudy.problems.registry import Problem, linear
from optimstudy.run.config import UPDATE_NORM_EVERY

NAME = "fullbatch"
TARGET = 1.15  # optimstudy's full-batch loop within 1.15x of a bare full-batch loop
ROWS, FEATURES, TEST_ROWS = 400, 3000, 100
LR, SEED, STEPS = 0.02, 0, 300  # lr below 2 / the largest curvature (~28 for MSE on these rows)
HIDDEN = 8  # the MLP's width: a ~1.6 ms bare step here, about the bare step the issue measured (1.5 ms)


def wide_rows(generator):
    """y = x w* + noise on N(0, 1) features: more features than rows, so SGD drives the training loss to ~0."""
    x = torch.randn(ROWS + TEST_ROWS, FEATURES, generator=generator)
    w = torch.randn(FEATURES, generator=generator) / FEATURES ** 0.5
    y = x @ w + 0.1 * torch.randn(ROWS + TEST_ROWS, generator=generator)
    return x[:ROWS], y[:ROWS], x[ROWS:], y[ROWS:]


def small_mlp(info):
    return torch.nn.Sequential(torch.nn.Linear(info.input_size, HIDDEN), torch.nn.Tanh(),
                               torch.nn.Linear(HIDDEN, info.outputs))


wide_regression = Problem(data=wide_rows, make_model=linear, task="regression",
                          description=f"{ROWS} x {FEATURES:,} linear regression (bench_fullbatch.py)")
wide_mlp = Problem(data=wide_rows, make_model=small_mlp, task="regression",
                   description=f"{ROWS} x {FEATURES:,} regression, a {FEATURES}-{HIDDEN}-1 tanh MLP "
                               "(bench_fullbatch.py)")
PROBLEM, MLP_PROBLEM = "bench_fullbatch:wide_regression", "bench_fullbatch:wide_mlp"


def bare_loop(x, y, steps: int, diagnostics=None, hidden: int | None = None) -> dict:
    """A full-batch loop as one would write it: the split's tensors every step, its loss at the start and
    end; with `diagnostics` (bench_floor's), that per-step recording too; with `hidden`, the MLP."""
    torch.manual_seed(SEED)
    model = torch.nn.Linear(x.shape[1], 1) if hidden is None else torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)
    before, after = diagnostics(params) if diagnostics else (None, None)
    window = Window()
    with torch.no_grad():
        losses = [F.mse_loss(model(x).squeeze(-1), y).item()]
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        if before is not None:
            before(loss)
        optimizer.step()
        if after is not None:
            after(optimizer.param_groups[0]["lr"], step)
        if step == steps:
            with torch.no_grad():
                losses.append(F.mse_loss(model(x).squeeze(-1), y).item())
        window(step, steps)
    return window.result(final_loss=losses[-1], evaluations=len(losses))


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    import optimstudy.run.training
    from optimstudy import RunConfig, train
    from optimstudy.run.batches import Batches
    from optimstudy.run.runner import load_data

    torch_threads = threads(args)
    torch.set_num_threads(torch_threads)
    # the loops take ~0.1 s a run: many repeats steady their medians on a loaded machine; the slow
    # "before" sides (~1-2 s a run, for information) are timed apart, fewer times
    steps, repeats, before_repeats = (100, 5, 3) if args.quick else (STEPS, 41, 7)
    base = dict(problem=PROBLEM, optimizer="sgd", lr=LR, seed=SEED, steps=steps, batch_size=ROWS, val_fraction=0,
                threads=torch_threads)
    config = RunConfig(**base).resolved()
    data = load_data(config, args.data_dir)
    assert len(data.train) == ROWS and data.train.x.shape[1] == FEATURES
    say(f"{NAME}: {steps} full-batch steps of {ROWS} x {FEATURES:,} per side, {repeats} repeats "
        f"({before_repeats} of the two 'before' sides with the bare loop beside them), "
        f"{torch_threads} torch thread(s)")

    class Gathered(Batches):  # every full batch before: the whole split gathered in a fresh order each step
        __next__ = Batches.gathered

    def optimstudy_side(run_config, batches=Batches):
        def side():
            window = Window()
            optimstudy.run.training.Batches = batches
            try:
                history = train(run_config, data=data, progress=window)
            finally:
                optimstudy.run.training.Batches = Batches
            return window.result(final_loss=history.final["train_loss"], evaluations=len(history.evals))
        return side

    bare = lambda: bare_loop(data.train.x, data.train.y, steps)  # noqa: E731
    times = interleave({
        "bare": bare,
        "optimstudy": optimstudy_side(config),
        "bare + StepRecorder": lambda: bare_loop(data.train.x, data.train.y, steps, recorder_diagnostics),
        "bare, MLP": lambda: bare_loop(data.train.x, data.train.y, steps, hidden=HIDDEN),
        "optimstudy, MLP": optimstudy_side(RunConfig(**{**base, "problem": MLP_PROBLEM}).resolved()),
        "optimstudy, update norm every step": optimstudy_side(replace(config, update_norm_every=1)),
    }, repeats)
    before = interleave({
        "bare": bare,
        "before: gathered batches, evaluating every step": optimstudy_side(RunConfig(**base, eval_every=1).resolved(),
                                                                           Gathered),
        "gathered batches alone": optimstudy_side(config, Gathered),
    }, before_repeats)
    before_ratio = {side: median(before[side]["wall_s"]) / median(before["bare"]["wall_s"]) for side in before}
    before_ms = {side: 1000 * median(before[side]["wall_s"]) / (steps - 1) for side in before}
    times.update({side: values for side, values in before.items() if side != "bare"})
    wall = {side: median(values["wall_s"]) for side, values in times.items()}
    fastest = {side: fastest_steps_s(values["steps_s"]) for side, values in times.items()}
    cpu = {side: median(values["cpu_s"]) for side, values in times.items()}
    ms = {side: 1000 * value / (steps - 1) for side, value in wall.items()}
    evaluations = {side: values["evaluations"][0] for side, values in times.items()}
    final_loss = {side: values["final_loss"][0] for side, values in times.items()}

    def pairs(side):
        ratios = [a / b for a, b in zip(times[side]["wall_s"], times["bare"]["wall_s"])]
        return f"repeats {min(ratios):.2f}-{max(ratios):.2f}"

    rows = [
        comparison(f"CPU full-batch loop: optimstudy (its defaults) / bare full-batch loop, {ROWS} x {FEATURES:,} "
                   "linear regression", wall["optimstudy"] / wall["bare"], TARGET, at_least=False, digits=3,
                   context=f"{ms['optimstudy']:.2f} vs {ms['bare']:.2f} ms/step, median of {repeats} interleaved "
                           f"repeats ({pairs('optimstudy')}); fastest repeat per step "
                           f"{fastest['optimstudy'] / fastest['bare']:.3f}×; thread CPU time "
                           f"{cpu['optimstudy'] / cpu['bare']:.3f}×; {evaluations['optimstudy']} vs "
                           f"{evaluations['bare']} evaluations; SGD, {steps} steps, {torch_threads} thread(s)"),
        comparison("CPU full-batch loop, before this change: gathered batches, evaluating every step / bare",
                   before_ratio["before: gathered batches, evaluating every step"], None, at_least=False,
                   digits=2, context=f"{before_ms['before: gathered batches, evaluating every step']:.2f} vs "
                                     f"{before_ms['bare']:.2f} ms/step, median of {before_repeats}; the gather "
                                     f"alone {before_ratio['gathered batches alone']:.2f}× "
                                     f"({before_ms['gathered batches alone']:.2f} ms/step)"),
        comparison("CPU full-batch loop: bare + optimstudy's per-step recording (StepRecorder) / bare",
                   wall["bare + StepRecorder"] / wall["bare"], None, at_least=False, digits=3,
                   context=f"fastest repeat per step {fastest['bare + StepRecorder'] / fastest['bare']:.3f}×: "
                           f"loss, grad norm and lr every step, update norm every {UPDATE_NORM_EVERY}th; optimstudy "
                           f"recording the update norm every step too (update_norm_every = 1) "
                           f"{wall['optimstudy, update norm every step'] / wall['bare']:.3f}×"),
        comparison(f"CPU full-batch loop: optimstudy (its defaults) / bare, the same data with a {FEATURES}-{HIDDEN}-1 "
                   "tanh MLP", wall["optimstudy, MLP"] / wall["bare, MLP"], None, at_least=False, digits=3,
                   context=f"{ms['optimstudy, MLP']:.2f} vs {ms['bare, MLP']:.2f} ms/step, a step as long as the "
                           f"issue's bare one; fastest repeat per step "
                           f"{fastest['optimstudy, MLP'] / fastest['bare, MLP']:.3f}×"),
    ]
    measurements = {
        "steps": steps, "timed_steps": steps - 1, "repeats": repeats, "before_repeats": before_repeats,
        "evaluations": evaluations, "before_ratios_to_bare (ratio of medians, timed apart)":
            {side: round(value, 4) for side, value in before_ratio.items()},
        "final_train_loss": {side: round(value, 6) for side, value in final_loss.items()},
        "ms_per_step (median window)": {side: round(value, 4) for side, value in ms.items()},
        "ratios_to_bare (ratio of medians)": {side: round(wall[side] / wall["bare"], 4) for side in times},
        "ratios_to_bare (fastest repeat per step)": {side: round(fastest[side] / fastest["bare"], 4) for side in times},
        "thread_cpu_ratios_to_bare": {side: round(cpu[side] / cpu["bare"], 4) for side in times},
        "wall_s": {side: spread(values["wall_s"]) for side, values in times.items()},
        "thread_cpu_s": {side: spread(values["cpu_s"]) for side, values in times.items()},
    }
    settings = {"problem": f"{ROWS} x {FEATURES} linear regression ({PROBLEM})", "optimizer": "SGD", "lr": LR,
                "batch_size": ROWS, "val_fraction": 0, "seed": SEED, "device": "cpu", "torch_threads": torch_threads,
                "window": "end of step 1 to end of the last step (progress hook), wall clock and thread CPU time",
                "measured": "per side, the median over interleaved repeats of the window's wall time",
                "order": "interleaved A B C ... then ... C B A, each side once untimed first"}
    return write_result(NAME, args, rows, settings, measurements, started, info)


if __name__ == "__main__":
    main()
