"""optimstudy's training loop vs the compute floor: the same steps on one fixed in-memory batch.

The floor is the bare loop zero_grad -> forward -> loss -> backward -> step on one tensor
batch: no data work, no metrics, no evaluation. optimstudy's loop also draws batches by
index, computes the gradient norm and the update norm, logs four metrics a step (copied to
the host every 50 steps) and evaluates on the validation split. A third side, the bare loop
on optimstudy's indexed batches, splits the difference into data work and diagnostics; a
micro-benchmark of each per-step extra says where the rest goes.
Same model (784-128-10 MLP), seed, SGD, batch 64, CPU, torch threads on every side.

    python benchmarks/bench_floor.py [--quick]
"""
import time

import torch
import torch.nn.functional as F

from common import comparison, cpu_timed, interleave, machine, median, options, say, spread, threads, write_result

NAME = "floor"
TARGET = 1.2  # optimstudy's loop within 1.2x of the floor
BATCH, LR, SEED = 64, 0.05, 0


def bare_loop(batches, steps: int) -> dict:
    """The floor: wall and CPU seconds for `steps` bare steps, each on next(batches)."""
    from optimstudy.problems import mlp

    torch.manual_seed(SEED)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started}


class FixedBatch:
    def __init__(self, x, y):
        self.batch = (x, y)

    def __next__(self):
        return self.batch


def per_call_us(function, calls: int) -> float:
    function()
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return 1e6 * (time.perf_counter() - started) / calls


def extras_microbenchmark(data, calls: int) -> dict:
    """µs per call of what optimstudy's loop does per step beyond the floor, each alone."""
    from optimstudy.data import Batches
    from optimstudy.losses import cross_entropy
    from optimstudy.problems import mlp
    from optimstudy.train import evaluate, global_norm

    torch.manual_seed(SEED)
    model = mlp()
    params = list(model.parameters())
    F.cross_entropy(model(data.train.x[:BATCH]), data.train.y[:BATCH]).backward()
    grads = [p.grad for p in params]
    saved = [p.detach().clone() for p in params]
    batches = Batches(data.train, BATCH, torch.Generator().manual_seed(SEED))
    pending = []

    def save_and_subtract():
        with torch.no_grad():
            for kept, p in zip(saved, params):
                kept.copy_(p)
            for kept, p in zip(saved, params):
                kept.sub_(p)

    return {
        "next(Batches) (index gather)": per_call_us(lambda: next(batches), calls),
        "global_norm(grads)": per_call_us(lambda: global_norm(grads), calls),
        "copy_ then sub_ of every weight (the update)": per_call_us(save_and_subtract, calls),
        "global_norm(update)": per_call_us(lambda: global_norm(saved), calls),
        "loss.detach() + list appends": per_call_us(lambda: pending.append(saved[0].sum().detach()), calls),
        "evaluate(val split) (once per eval)": per_call_us(
            lambda: evaluate(model, data.val, cross_entropy, True), max(5, calls // 100)),
    }


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    from optimstudy import RunConfig
    from optimstudy.data import Batches
    from optimstudy.runner import execute, load_data
    from optimstudy.train import total_steps

    torch_threads = threads(args)
    torch.set_num_threads(torch_threads)
    epochs, repeats = (3, 2) if args.quick else (10, 5)
    config = RunConfig(problem="mnist_mlp", optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, epochs=epochs,
                       threads=torch_threads).resolved()
    data = load_data(config, args.data_dir)
    steps = total_steps(config, len(data.train))
    fixed = FixedBatch(data.train.x[:BATCH].clone(), data.train.y[:BATCH].clone())
    say(f"{NAME}: {steps} steps ({epochs} epochs of {len(data.train)} images) per side, {repeats} repeats, "
        f"{torch_threads} torch thread(s)")

    def optimstudy_side():
        cpu_s, (history, _) = cpu_timed(execute, config, None, data=data)
        return {"wall_s": history.wall_s, "cpu_s": cpu_s, "evaluations": len(history.evals)}

    sides = {
        "floor_fixed_batch": lambda: bare_loop(fixed, steps),
        "optimstudy": optimstudy_side,
        "bare_loop_indexed_batches": lambda: bare_loop(
            Batches(data.train, BATCH, torch.Generator().manual_seed(SEED)), steps),
    }
    times = interleave(sides, repeats)
    floor = median(times["floor_fixed_batch"]["wall_s"])
    ours = median(times["optimstudy"]["wall_s"])
    indexed = median(times["bare_loop_indexed_batches"]["wall_s"])
    cpu = {side: median(values["cpu_s"]) for side, values in times.items()}
    extras = extras_microbenchmark(data, 200 if args.quick else 1000)
    rows = [comparison(
        "optimstudy loop / compute floor (one fixed batch, bare loop)", ours / floor, TARGET, at_least=False,
        context=f"{1000 * ours / steps:.2f} vs {1000 * floor / steps:.2f} ms/step; "
                f"indexed batches alone {indexed / floor:.2f}×; CPU time {cpu['optimstudy'] / cpu['floor_fixed_batch']:.2f}×",
    )]
    measurements = {
        "steps": steps, "repeats": repeats, "evaluations_per_run": times["optimstudy"]["evaluations"][0],
        "wall_s": {side: spread(values["wall_s"]) for side, values in times.items()},
        "cpu_s": {side: spread(values["cpu_s"]) for side, values in times.items()},
        "ms_per_step": {side: round(1000 * median(values["wall_s"]) / steps, 4) for side, values in times.items()},
        "ratios": {"optimstudy / floor": round(ours / floor, 4),
                   "indexed batches / floor (data work)": round(indexed / floor, 4),
                   "optimstudy / indexed batches (diagnostics, metrics, evaluation)": round(ours / indexed, 4),
                   "CPU time: optimstudy / floor": round(cpu["optimstudy"] / cpu["floor_fixed_batch"], 4),
                   "CPU time: indexed batches / floor": round(cpu["bare_loop_indexed_batches"] / cpu["floor_fixed_batch"], 4)},
        "extras_us_per_call": {k: round(v, 2) for k, v in extras.items()},
    }
    settings = {"problem": "mnist_mlp", "optimizer": "SGD", "lr": LR, "batch_size": BATCH, "seed": SEED,
                "device": "cpu", "torch_threads": torch_threads, "epochs": epochs,
                "optimstudy_time": "History.wall_s (start-up excluded, evaluations included)",
                "cpu_s": "process CPU time; optimstudy's covers execute() as a whole (model creation, final metrics)"}
    result = write_result(NAME, args, rows, settings, measurements, started, info)
    for name, us in extras.items():
        print(f"    {name}: {us:.1f} µs per call")
    return result


if __name__ == "__main__":
    main()
