"""optimstudy's training loop vs the usual pipeline: a DataLoader over torchvision's MNIST.

The baseline is written as pytorch/examples `mnist/main.py` writes it: a DataLoader over
`torchvision.datasets.MNIST(root, transform=Compose([ToTensor(), Normalize((0.1307,), (0.3081,))]))`
and the loop zero_grad -> forward -> cross-entropy -> backward -> step (with the loss read
every 10 steps, as its log_interval does). Both sides train the same 784-128-10 MLP
(optimstudy.problems.mlp) from the same seed with SGD at batch 64 for the same number of
steps, on CPU with the same torch threads. optimstudy's time is its History.wall_s, which
also pays for its grad/update norms, metrics and evaluations; the baseline's pays for none.
Dataset loading is timed once, apart: both pipelines do it once per process.

    python benchmarks/bench_pipeline.py [--quick]
"""
import time

import torch
import torch.nn.functional as F
from common import (
    comparison,
    cpu_timed,
    interleave,
    machine,
    median,
    options,
    say,
    spread,
    threads,
    timed,
    write_result,
)

NAME = "pipeline"
TARGET = 5.0  # optimstudy's loop at least 5x faster than the DataLoader pipeline
BATCH, LR, SEED = 64, 0.05, 0
LOG_INTERVAL = 10  # pytorch/examples reads loss.item() every 10 batches


def examples_dataset(root: str):
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    return datasets.MNIST(root, train=True, download=False, transform=transform)


def examples_train(dataset, steps: int) -> dict:
    """pytorch/examples' train(): a fresh model and DataLoader, `steps` batches, timed from the first."""
    from optimstudy.problems.registry import mlp

    torch.manual_seed(SEED)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                         generator=torch.Generator().manual_seed(SEED))
    model.train()
    losses, done = [], 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while done < steps:
        for data, target in loader:
            optimizer.zero_grad()
            output = model(data)
            loss = F.cross_entropy(output, target)
            loss.backward()
            optimizer.step()
            done += 1
            if done % LOG_INTERVAL == 0:
                losses.append(loss.item())
            if done == steps:
                break
    return {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started,
            "last_logged_loss": losses[-1] if losses else float("nan")}


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    from optimstudy import RunConfig
    from optimstudy.problems.data import data_root
    from optimstudy.run.batches import steps_per_epoch
    from optimstudy.run.runner import execute, load_data

    torch_threads = threads(args)
    torch.set_num_threads(torch_threads)
    epochs, repeats = (1, 2) if args.quick else (2, 5)
    probe = RunConfig(problem="mnist_mlp", optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, steps=1,
                      threads=torch_threads)
    load_optimstudy_s, data = timed(load_data, probe, args.data_dir)
    per_epoch = steps_per_epoch(len(data.train), BATCH, 1)
    steps = epochs * per_epoch
    config = RunConfig(problem="mnist_mlp", optimizer="sgd", lr=LR, batch_size=BATCH, seed=SEED, steps=steps,
                       threads=torch_threads)
    root = str(data_root(args.data_dir))
    load_examples_s, dataset = timed(examples_dataset, root)
    say(f"{NAME}: {steps} steps ({epochs} epoch(s) of {len(data.train)} images) per side, {repeats} repeats, "
        f"{torch_threads} torch thread(s)")

    finals = {}

    def optimstudy_side():
        cpu_s, (history, _) = cpu_timed(execute, config, None, data=data)
        finals["optimstudy_val_accuracy"] = history.final["val_accuracy"]
        return {"wall_s": history.wall_s, "cpu_s": cpu_s}

    def examples_side():
        result = examples_train(dataset, steps)
        finals["examples_last_logged_loss"] = result["last_logged_loss"]
        return {"wall_s": result["wall_s"], "cpu_s": result["cpu_s"]}

    times = interleave({"examples_dataloader": examples_side, "optimstudy": optimstudy_side}, repeats)
    baseline, ours = median(times["examples_dataloader"]["wall_s"]), median(times["optimstudy"]["wall_s"])
    epoch_baseline, epoch_ours = baseline / epochs, ours / epochs
    cpu_ratio = median(times["examples_dataloader"]["cpu_s"]) / median(times["optimstudy"]["cpu_s"])
    rows = [comparison(
        "epoch time: DataLoader pipeline / optimstudy loop (MNIST MLP, batch 64, SGD)", baseline / ours, TARGET,
        at_least=True, context=f"{epoch_baseline:.2f} s vs {epoch_ours:.3f} s per epoch of {per_epoch} steps; "
                f"CPU time {cpu_ratio:.2f}×",
    )]
    measurements = {
        "steps": steps, "steps_per_epoch": per_epoch, "epochs": epochs, "repeats": repeats,
        "wall_s": {side: spread(values["wall_s"]) for side, values in times.items()},
        "cpu_s": {side: spread(values["cpu_s"]) for side, values in times.items()},
        "cpu_ratio": round(cpu_ratio, 4),
        "seconds_per_epoch": {"examples_dataloader": round(epoch_baseline, 4), "optimstudy": round(epoch_ours, 4)},
        "ms_per_step": {"examples_dataloader": round(1000 * baseline / steps, 3),
                        "optimstudy": round(1000 * ours / steps, 3)},
        "one_time_load_s": {"optimstudy_load_data": round(load_optimstudy_s, 3),
                            "torchvision_MNIST_with_transform": round(load_examples_s, 3)},
        "sanity": finals,
    }
    settings = {"problem": "mnist_mlp", "model": "784-128-10 MLP (optimstudy.problems.mlp)", "optimizer": "SGD",
                "lr": LR, "batch_size": BATCH, "seed": SEED, "device": "cpu", "torch_threads": torch_threads,
                "data_root": root, "optimstudy_train_images": len(data.train), "examples_train_images": len(dataset),
                "dataloader": "num_workers=0, shuffle=True (pytorch/examples' CPU settings)",
                "optimstudy_time": "History.wall_s: includes its norms, metrics and evaluations",
                "cpu_s": "process CPU time, less sensitive to other load; optimstudy's includes execute() as a whole"}
    return write_result(NAME, args, rows, settings, measurements, started, info)


if __name__ == "__main__":
    main()
