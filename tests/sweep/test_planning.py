"""Bounded planning (issue 29, part 3): a 100,000-trial grid is counted, summarised and refused in
seconds, and the fast planner plans exactly what building every trial plans.

The time and memory bounds are loose on purpose (two shared cores); docs/performance.md records
what they measured.
"""
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from optimstudy.sweep.planning import MAX_TRIALS_UNASKED, Planned, plan, plan_counts
from optimstudy.sweep.spec import config_key
from optimstudy.sweep.spec_reader import load_spec

REPO = Path(__file__).resolve().parents[2]

MIXED = """
name = "mixed"
problems = ["linreg", "valley"]
steps = 10
seeds = [0, 3, 7]
batch_size = [16, 32]
split_seed = [0, 1]
schedule = "warmup_cosine"
schedule_args = { warmup = [2, 4] }

[optimizers.adamw]
lr = [0.01, 0.1]
weight_decay = [0.0, 0.1]
betas = [[0.9, 0.999], [0.95, 0.99]]

[optimizers.sgd_m]
optimizer = "sgd"
lr = [0.1]
momentum = 0.9

[[runs]]
optimizer = "sgd"
lr = 0.05
zero_grad = false
label = "no zero_grad"
"""


def big_spec(folder: Path, extra: str = "") -> Path:
    """100 learning rates x 100 seeds x 10 batch sizes: 100,000 trials."""
    lrs = ", ".join(f"{0.001 * (1 + i / 10):.6g}" for i in range(100))
    path = folder / "big.toml"
    path.write_text(f'name = "big"\nproblem = "linreg"\nsteps = 10\n{extra}'
                    f'seeds = [{", ".join(map(str, range(100)))}]\n'
                    f"batch_size = [8, 16, 24, 32, 40, 48, 56, 64, 72, 80]\n\n"
                    f"[optimizers.sgd]\nlr = [{lrs}]\n")
    return path


def slow_plan(spec) -> list[Planned]:
    """The grid planned the way it was before: every trial built (and checked) on its own."""
    planned = []
    for problem in spec.problems:
        for settings in spec.grid_settings():
            for optimizer in spec.optimizers:
                for lr in optimizer.lrs:
                    for opt in optimizer.argument_sets():
                        for schedule_args in spec.schedule_arg_sets():
                            for seed in spec.seeds:
                                config = spec.base_config(problem, optimizer, lr, seed, "cpu", opt, schedule_args,
                                                          **settings)
                                planned.append(Planned(config_key(config, optimizer.label), "grid", config,
                                                       optimizer.label))
    return planned


def test_the_fast_planner_plans_what_building_every_trial_plans(tmp_path):
    path = tmp_path / "mixed.toml"
    path.write_text(textwrap.dedent(MIXED))
    spec = load_spec(path)
    planned, _ = plan(spec)
    reference = slow_plan(spec)
    grid = [item for item in planned if item.phase == "grid"]
    # problems x (batch_size x split_seed) x (adamw: lr x weight_decay x betas x warmup + sgd_m: lr x warmup) x seeds
    assert len(grid) == len(reference) == 2 * (2 * 2) * (2 * 2 * 2 * 2 + 1 * 2) * 3
    for fast, slow in zip(grid, reference, strict=True):
        assert fast.key == slow.key
        assert fast.config == slow.config
        assert config_key(fast.config, fast.label) == fast.key  # the key is the config's own
    assert len({item.key for item in planned}) == len(planned)


@pytest.mark.parametrize("path", [*sorted((REPO / "experiments").glob("*.toml")), "mixed"],
                         ids=lambda p: Path(p).stem)
def test_counting_a_plan_gives_its_size_per_problem_and_optimizer(path, tmp_path):
    if path == "mixed":
        path = tmp_path / "mixed.toml"
        path.write_text(textwrap.dedent(MIXED))
    spec = load_spec(path)
    planned, _ = plan(spec)
    counted = {}
    for item in planned:
        counted[(item.config.problem, item.label)] = counted.get((item.config.problem, item.label), 0) + 1
    assert plan_counts(spec) == counted


def measured(*args, cwd) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, seconds, peak MB) of `python -m optimstudy ARGS`, the peak as the kernel counts it."""
    probe = textwrap.dedent(f"""
        import json, resource, subprocess, sys, time
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "optimstudy", *{list(map(str, args))!r}],
                                capture_output=True, text=True)
        print(json.dumps({{"rc": result.returncode, "out": result.stdout, "err": result.stderr,
                          "s": time.perf_counter() - started,
                          "mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
    """)
    done = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True,
                                     check=True, timeout=300).stdout)
    return subprocess.CompletedProcess(args, done["rc"], done["out"], done["err"]), done["s"], done["mb"]


@pytest.mark.slow
def test_a_100000_trial_grid_is_summarised_and_refused_in_seconds(tmp_path):
    path = big_spec(tmp_path)
    small = tmp_path / "small.toml"
    small.write_text('name = "small"\nproblem = "linreg"\nsteps = 10\n\n[optimizers.sgd]\nlr = [0.1]\n')
    baseline, _, baseline_mb = measured("sweep", small, "--dry-run", cwd=tmp_path)  # the same imports, 1 trial
    assert baseline.returncode == 0, baseline.stderr[-2000:]

    dry, seconds, peak_mb = measured("sweep", path, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("sweep 'big'") and "100000 trials" in lines[0]
    assert any("linreg" in line and "sgd" in line and "100,000 trials" in line for line in lines)
    assert len([line for line in lines if line[:4].strip().isdigit()]) == 10  # the first few, not 100,000
    assert "max_trials = 100000" in dry.stdout
    assert len(lines) < 30
    assert seconds < 30, seconds
    assert peak_mb - baseline_mb < 400, (peak_mb, baseline_mb)  # torch alone is ~600 MB here (the CUDA build)

    refused, seconds, _ = measured("sweep", path, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "100,000 trials" in refused.stderr and f"{MAX_TRIALS_UNASKED:,}" in refused.stderr
    assert "max_trials = 100000" in refused.stderr and "Traceback" not in refused.stderr
    assert seconds < 30, seconds
    assert not (tmp_path / "mlruns").exists()  # refused before anything was written

    capped = big_spec(tmp_path, extra="max_trials = 50000\n")
    refused, _, _ = measured("sweep", capped, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "more than its max_trials = 50,000" in refused.stderr and "max_trials = 100000" in refused.stderr
    assert not (tmp_path / "mlruns").exists()


def test_max_trials_must_be_a_positive_integer(tmp_path):
    from optimstudy.sweep.spec import SpecError

    path = big_spec(tmp_path, extra="max_trials = 0\n")
    with pytest.raises(SpecError, match="max_trials"):
        load_spec(path)


@pytest.mark.slow
def test_the_planned_trials_of_a_large_grid_take_seconds_not_minutes(tmp_path):
    spec = load_spec(big_spec(tmp_path))
    started = time.perf_counter()
    planned, _ = plan(spec)
    took = time.perf_counter() - started
    assert len(planned) == 100_000 and len({item.key for item in planned[:20_000]}) == 20_000
    assert took < 30, took  # ~1.5 s here; it took ~30 s when every trial was built and checked
