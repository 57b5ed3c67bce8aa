"""Start-up: a short `optimstudy run` as a whole command, against a bare PyTorch script.

A user's first contact with the tool is a short run, and every sweep pays the same start-up
once per command. Each side is a fresh process doing the same 10 SGD steps of linear
regression; the sides alternate and the medians of their wall times are compared:
- floor: `python -c "import torch; ..."`, a bare script (torch, an optimizer, 10 steps);
- `optimstudy run --problem linreg --steps 10 --no-track`;
- the same run tracked, into a store that exists (./mlruns/mlflow.db);
- the same run tracked, into a fresh folder (MLflow creates and migrates its store).

Every torch optimizer imports torch._dynamo on construction (~1.5 s here), so the floor
includes it too.

    python benchmarks/bench_startup.py [--quick]
"""
import os
import subprocess
import sys
import tempfile
import time

from common import comparison, interleave, machine, median, options, say, spread, write_result

NAME = "startup"
STEPS = 10
BARE = ("import torch\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(512, 10); y = x @ torch.randn(10, 1) + 0.1 * torch.randn(512, 1)\n"
        "model = torch.nn.Linear(10, 1); optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        f"for step in range({STEPS}):\n"
        "    batch = torch.randint(0, 512, (64,))\n"
        "    optimizer.zero_grad(); loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])\n"
        "    loss.backward(); optimizer.step()\n"
        "print(float(loss))\n")
RUN = [sys.executable, "-m", "optimstudy", "run", "--problem", "linreg", "--steps", str(STEPS)]


def wall_s(command: list[str], cwd: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{NAME}: `{' '.join(command[1:])}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return {"wall_s": seconds}


def main(argv=None) -> dict:
    args = options(NAME, __doc__.splitlines()[0]).parse_args(argv)
    started = time.perf_counter()
    info = machine()
    repeats = 3 if args.quick else 9
    say(f"{NAME}: {STEPS}-step linreg runs, each a fresh process; {repeats} per side, interleaved")
    with tempfile.TemporaryDirectory(prefix="optimstudy-startup-") as folder:
        existing = os.path.join(folder, "existing")
        os.makedirs(existing)
        wall_s(RUN, existing)  # creates the store that the "existing store" side reuses

        def fresh_store() -> dict:
            with tempfile.TemporaryDirectory(dir=folder) as fresh:
                return wall_s(RUN, fresh)

        times = interleave({"bare": lambda: wall_s([sys.executable, "-c", BARE], folder),
                            "untracked": lambda: wall_s(RUN + ["--no-track"], folder),
                            "tracked": lambda: wall_s(RUN, existing),
                            "fresh_store": fresh_store}, repeats=repeats)
    medians = {side: median(measured["wall_s"]) for side, measured in times.items()}
    bare = medians["bare"]
    rows = [comparison(f"start-up: `optimstudy run` of {STEPS} steps, {label} / a bare torch script of the same "
                       "steps (whole command, fresh process)", medians[side] / bare, None, at_least=False,
                       context=f"{medians[side]:.2f} s vs {bare:.2f} s; {len(times[side]['wall_s'])} runs per side")
            for side, label in (("untracked", "--no-track"), ("tracked", "tracked into an existing store"),
                                ("fresh_store", "tracked into a fresh store"))]
    settings = {"steps": STEPS, "bare_script": BARE, "command": " ".join(["python", *RUN[1:]]),
                "repeats": repeats}
    return write_result(NAME, args, rows, settings,
                        {side: spread(measured["wall_s"]) for side, measured in times.items()}, started, info)


if __name__ == "__main__":
    main()
