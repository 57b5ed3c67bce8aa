"""What every benchmark shares: options, interleaved timing, machine facts and the result files.

A benchmark compares two sides (e.g. optimstudy's loop and a bare loop) on the same data,
model, optimizer, seed and torch threads. On a shared machine the load changes from second
to second, so the sides run interleaved (A B B A A B ...) and the medians are compared:
both sides see the same noise, and the ratio of medians is what is reported.

    from common import comparison, interleave, median, options, write_result
    args = options("bench_x", "what it measures").parse_args()
    times = interleave({"a": run_a, "b": run_b}, repeats=5)   # each side returns {"wall_s": ...}
    ratio = median(times["a"]["wall_s"]) / median(times["b"]["wall_s"])
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# MLflow's system metrics are off in benchmarks unless one turns them on (bench_tracking times both)
os.environ.setdefault("OPTIMSTUDY_SYSTEM_METRICS_S", "0")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"  # smoke runs never overwrite the full numbers (git-ignored)


# ---- options ---------------------------------------------------------------------------------

def options(name: str, description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes; run_all.py passes them through."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer steps and repeats")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, the same on both sides (default: optimstudy's, cores - 1)")
    parser.add_argument("--data-dir", default=None,
                        help="MNIST root with MNIST/raw/ (default: $OPTIMSTUDY_DATA_DIR, else optimstudy's cache)")
    parser.add_argument("--results", default=None,
                        help="folder for the JSON results (default: benchmarks/results, or results/quick with --quick)")
    return parser


def results_dir(args) -> Path:
    return Path(args.results) if args.results else (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)


def threads(args) -> int:
    """The torch threads both sides use: --threads, else what RunConfig.resolved() picks."""
    from optimstudy.run.config import default_threads

    return args.threads or default_threads()


# ---- timing ----------------------------------------------------------------------------------

def interleave(sides: dict, repeats: int, warmup: bool = True) -> dict:
    """Run each side `repeats` times in A B / B A order; returns {side: {measure: [values]}}.

    Each side is a callable returning {measure: value}. With `warmup`, every side runs once
    first, untimed (allocator, lazy imports, first-touch page faults).
    """
    names = list(sides)
    if warmup:
        for name in names:
            sides[name]()
    results = {name: {} for name in names}
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            for measure, value in sides[name]().items():
                results[name].setdefault(measure, []).append(value)
    return results


def timed(function, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call, by the wall clock."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def cpu_timed(function, *args, **kwargs) -> tuple[float, object]:
    """(CPU seconds of this process, result) of one call: less sensitive to other load than the wall clock."""
    started = time.process_time()
    result = function(*args, **kwargs)
    return time.process_time() - started, result


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> dict:
    """Median, min, max and every value, rounded for the JSON."""
    return {"median": round(median(values), 6), "min": round(min(values), 6), "max": round(max(values), 6),
            "values": [round(v, 6) for v in values]}


# ---- comparisons -----------------------------------------------------------------------------

def comparison(name: str, measured: float | None, target: float | None, *, at_least: bool,
               unit: str = "×", digits: int = 2, context: str = "", detail: dict | None = None,
               skipped: str | None = None) -> dict:
    """One row of the table: a measured value against its target (≥ when at_least, else ≤)."""
    sign = "≥" if at_least else "≤"
    space = "" if unit == "×" else " "
    row = {"name": name, "measured": None if measured is None else round(measured, 4), "unit": unit,
           "target": target, "direction": ">=" if at_least else "<=",
           "target_text": f"{sign} {target:g}{space}{unit}" if target is not None else "(information)",
           "met": None, "detail": detail or {}}
    if skipped is not None:
        row["measured_text"], row["skipped"] = f"skipped: {skipped}", skipped
        return row
    row["measured_text"] = f"{measured:.{digits}f}{space}{unit}" + (f" ({context})" if context else "")
    if target is not None:
        row["met"] = bool(measured >= target if at_least else measured <= target)
    return row


def print_comparisons(rows: list[dict]) -> None:
    for row in rows:
        met = {True: "met", False: "NOT MET", None: "-"}[row["met"]]
        print(f"  {row['name']}: {row['measured_text']}   target {row['target_text']}   {met}", flush=True)



# ---- sweeps ----------------------------------------------------------------------------------

def sgd_grid_spec(bench: str, name: str, description: str, *, problem: str, steps: int, seeds: int, lr: str,
                  threads: int, device: str = "cpu", batch_size: int = 64) -> str:
    """The spec of a grid that benchmarks/`bench`.py sweeps: SGD at the learning rates `lr` (TOML:
    a list or a log range) x seeds 0..`seeds`-1, `threads` torch threads per worker."""
    return f"""# generated by benchmarks/{bench}.py
name = "{name}"
description = "{description}"
problem = "{problem}"
steps = {steps}
batch_size = {batch_size}
seeds = {list(range(seeds))}
devices = ["{device}"]
threads = {threads}

[optimizers.sgd]
lr = {lr}
"""


def toml_list(values) -> str:
    return f"[{', '.join(f'{value:g}' for value in values)}]"


def sweep_in_fresh_folder(bench: str, spec: str, study: str, workers: int, data_dir: str | None,
                          timeout: int = 900) -> tuple[float, subprocess.CompletedProcess, list]:
    """(seconds, the finished command, the study's trials) of the real `optimstudy sweep SPEC
    --workers N --json` in a fresh temporary folder: its own ./mlruns store and Optuna journal.

    The trials are read from the journal before the folder goes; a failed command ends the
    benchmark `bench` with the command's last output.
    """
    import tempfile

    import optuna

    with tempfile.TemporaryDirectory(prefix=f"optimstudy-{bench}-{study}-{workers}w-") as folder:
        spec_path = Path(folder) / f"{study}.toml"
        spec_path.write_text(spec)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        if data_dir:
            env["OPTIMSTUDY_DATA_DIR"] = data_dir
        command = [sys.executable, "-m", "optimstudy", "sweep", str(spec_path), "--workers", str(workers), "--json"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{bench}: `{' '.join(command[1:])}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        journal = Path(folder) / "mlruns" / "optuna" / f"{study}.journal"
        trials = optuna.load_study(study_name=study, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal)))).get_trials(deepcopy=False)
    return seconds, done, trials

# ---- the machine -----------------------------------------------------------------------------

def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "src"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return result.stdout.strip() + ("+dirty src" if dirty else "")


def machine() -> dict:
    from importlib.metadata import version

    import torch

    from optimstudy import __version__
    from optimstudy.run.devices import cpu_count, device_label

    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {
        "cpu": device_label("cpu"), "cores": cpu_count(), "memory_gb": _memory_gb(), "gpus": gpus,
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": version("torchvision"),
        "mlflow": version("mlflow"), "optuna": version("optuna"), "optimstudy": __version__,
        "git": git_commit(), "os": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds"),
        "load_average_1_5_15": load_average(),
    }


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return None


# ---- data ------------------------------------------------------------------------------------

def stage_fashion_mnist(folder: Path) -> str:
    """A data root holding full-size Fashion-MNIST in torchvision's layout, made from Debian's files.

    optimstudy.data copies Debian's .gz files and lets torchvision check their md5, but
    Debian's are re-compressed (no file name in the gzip header: 24 bytes shorter), so the
    md5 differs and torchvision tries to download. Here they are decompressed instead:
    torchvision accepts the raw IDX files as they are.
    """
    import gzip
    import shutil

    from optimstudy.problems.data import DEBIAN_FASHION_MNIST

    raw = Path(folder) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sources = sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"))
    if len(sources) != 4:
        raise SystemExit(f"Fashion-MNIST not found in {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist)")
    for source in sources:
        with gzip.open(source) as packed, open(raw / source.name[:-3], "wb") as unpacked:
            shutil.copyfileobj(packed, unpacked)
    return str(folder)


# ---- results ---------------------------------------------------------------------------------

def write_result(name: str, args, comparisons: list[dict], settings: dict, measurements: dict,
                 started: float, machine_info: dict) -> dict:
    """Write results/<name>.json, merge it into results/latest.json, print the rows; returns the result."""
    result = {
        "benchmark": name, "mode": "quick" if args.quick else "full", "machine": machine_info,
        "load_average_after": load_average(), "elapsed_s": round(time.perf_counter() - started, 1),
        "settings": settings, "comparisons": comparisons, "measurements": measurements,
    }
    folder = results_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    latest_path = folder / "latest.json"
    latest = json.loads(latest_path.read_text()) if latest_path.exists() else {}
    latest.setdefault("benchmarks", {})[name] = result
    latest["updated"] = machine_info["date"]
    latest_path.write_text(json.dumps(latest, indent=2, ensure_ascii=False) + "\n")
    print(f"{name} ({result['mode']}, {result['elapsed_s']:.0f} s; wrote {_short(folder / (name + '.json'))}):")
    print_comparisons(comparisons)
    return result


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def say(message: str) -> None:
    """Progress on stderr, so stdout stays the results."""
    print(message, file=sys.stderr, flush=True)
