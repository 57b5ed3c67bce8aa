"""Grids over optimizer and schedule arguments: a list in a spec is a grid axis beside lr.

A real sweep with such a grid, whose best (lr, weight_decay) is confirmed on new seeds, is
test_sweeps.py::test_best_lr_table_edge_warning_and_confirmation.
"""
import textwrap

import pandas as pd
import pytest

from optimstudy import results
from optimstudy.sweep.planning import compare_identity, plan, spec_identity
from optimstudy.sweep.spec import SpecError
from optimstudy.sweep.spec_reader import load_spec

GRID = """
name = "{name}"
problem = "linreg"
steps = 10
seeds = [0, 1]
schedule = "warmup_cosine"
schedule_args = {{ warmup = [2, 4], start_factor = 0.1 }}

[optimizers.adamw]
lr = [0.01, 0.1]
weight_decay = [0.0, 0.01, 0.1]
betas = [[0.9, 0.999], [0.95, 0.99]]   # a list of pairs: a grid of betas

[optimizers.adam]
lr = [0.01]
betas = [0.9, 0.99]                    # a flat list: one value (a pair)
"""


def spec_from(tmp_path, body, name="grids"):
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(body).format(name=name))
    return load_spec(path)


def test_a_list_of_argument_values_plans_every_combination_with_the_lr_grid(tmp_path):
    spec = spec_from(tmp_path, GRID)
    planned, _ = plan(spec)
    adamw = [p.config for p in planned if p.label == "adamw"]
    combos = {(c.lr, c.opt["weight_decay"], c.opt["betas"], c.schedule_args["warmup"], c.seed) for c in adamw}
    assert len(adamw) == len(combos) == 2 * 3 * 2 * 2 * 2  # lr x weight_decay x betas x warmup x seeds
    assert {c.opt["betas"] for c in adamw} == {(0.9, 0.999), (0.95, 0.99)}
    assert all(c.schedule_args["start_factor"] == 0.1 for c in adamw)
    adam = [p.config for p in planned if p.label == "adam"]
    assert {c.opt["betas"] for c in adam} == {(0.9, 0.99)} and len(adam) == 1 * 2 * 2
    assert len({p.key for p in planned}) == len(planned)  # every combination is its own trial

    # a schedule argument whose value is a list (milestones) keeps a flat list as one value
    multistep = spec_from(tmp_path, GRID.replace('"warmup_cosine"', '"multistep"').replace(
        "warmup = [2, 4], start_factor = 0.1", "milestones = [2, 4], gamma = [0.1, 0.5]"), "multistep")
    assert multistep.schedule_grid == {"gamma": (0.1, 0.5)}
    assert multistep.settings["schedule_args"] == {"milestones": (2, 4)}


@pytest.mark.parametrize("change, named", [
    ("weight_decay = [0.0, 0.01, 0.1]", "key 'optimizers.adamw.weight_decay' (line 11): weight_decay = -0.1"),
    ("betas = [[0.9, 0.999], [0.95, 0.99]]",  # torch's message says "beta": the key named is the table's
     "Invalid beta parameter at index 1: 2.0) with lr=0.01 and weight_decay=0.0, betas=(0.9, 2.0)"),
    ("warmup = [2, 4]", "warmup must be an integer in 1..99 (steps of the schedule), got 0"),
])
def test_each_grid_value_is_checked_and_a_bad_one_named(tmp_path, change, named):
    bad = {"weight_decay = [0.0, 0.01, 0.1]": "weight_decay = [0.0, -0.1]",
           "betas = [[0.9, 0.999], [0.95, 0.99]]": "betas = [[0.9, 0.999], [0.9, 2.0]]",
           "warmup = [2, 4]": "warmup = [2, 0]"}[change]
    with pytest.raises(SpecError) as error:
        spec_from(tmp_path, GRID.replace(change, bad))
    assert named in str(error.value)


def test_a_search_takes_no_grid(tmp_path):
    body = GRID.replace("lr = [0.01, 0.1]\n", "").replace("lr = [0.01]\n", "") + "[search]\ntrials = 2\n"
    with pytest.raises(SpecError, match="optimizers.adamw.weight_decay.*a \\[search\\] spec searches"):
        spec_from(tmp_path, body)


def test_identity_is_unchanged_without_lists_and_a_grid_may_grow(tmp_path):
    plain = spec_from(tmp_path, GRID.replace("weight_decay = [0.0, 0.01, 0.1]", "weight_decay = 0.01").replace(
        "betas = [[0.9, 0.999], [0.95, 0.99]]", "").replace("warmup = [2, 4], ", "warmup = 2, "), "plain")
    identity = spec_identity(plain)
    assert "schedule_grid" not in identity  # the identity of a spec from before grids: no new keys
    assert all(set(o) == {"optimizer", "lr", "fixed", "space"} for o in identity["optimizers"].values())
    assert identity["optimizers"]["adamw"]["fixed"] == {"weight_decay": 0.01}

    old = spec_identity(spec_from(tmp_path, GRID))
    grown = spec_identity(spec_from(tmp_path, GRID.replace("[0.0, 0.01, 0.1]", "[0.0, 0.01, 0.1, 0.3]")
                                    .replace("warmup = [2, 4]", "warmup = [2, 4, 8]")))
    assert compare_identity(old, grown) == (["optimizers.adamw.weight_decay 0.3", "schedule_args.warmup 8"], [])
    shrunk = spec_identity(spec_from(tmp_path, GRID.replace("[0.0, 0.01, 0.1]", "[0.0, 0.01]")))
    assert compare_identity(old, shrunk)[1] == ["optimizers.adamw.weight_decay (removed 0.1)"]


def tidy(objectives: dict) -> pd.DataFrame:
    """A tidy frame as tracking.reader.load_runs gives it: one run per (weight_decay, lr) -> final val_loss."""
    rows = []
    for number, ((decay, lr), value) in enumerate(objectives.items()):
        run = {"run_id": f"r{number}", "experiment": "e", "problem": "linreg", "optimizer": "adamw", "lr": lr,
               "seed": 0, "status": "FINISHED", "opt.weight_decay": str(decay), "opt.betas": "(0.9, 0.999)"}
        rows += [{**run, "step": 10, "metric": "final_val_loss", "value": value},
                 {**run, "step": 10, "metric": "train_loss", "value": value}]
    return pd.DataFrame(rows)


def test_the_best_value_of_a_numeric_argument_grid_at_its_edge_is_warned():
    middle_lr = {(d, lr): 1.0 for d in (0.0, 0.01, 0.1) for lr in (0.001, 0.01, 0.1)}
    at_largest = results.best_configurations(results.run_table(tidy({**middle_lr, (0.1, 0.01): 0.5})))
    row = at_largest.iloc[0]
    assert row["args"] == "betas=(0.9, 0.999) weight_decay=0.1" and row["lr"] == 0.01
    assert row["edge_warning"] == ("linreg/adamw (e): best weight_decay 0.1 is the largest tried (0..0.1, 3 values); "
                                   "extend the grid above it")  # betas, not a number, is never warned about
    inside = results.best_configurations(results.run_table(tidy({**middle_lr, (0.01, 0.01): 0.5})))
    assert inside.iloc[0]["edge_warning"] == ""
    at_zero = results.best_configurations(results.run_table(tidy({**middle_lr, (0.0, 0.01): 0.5})))
    assert at_zero.iloc[0]["edge_warning"] == ""  # no weight decay is an end already
    tied = results.best_configurations(results.run_table(tidy({**middle_lr, (0.1, 0.01): 0.5, (0.01, 0.01): 0.5})))
    assert "weight_decay" not in tied.iloc[0]["edge_warning"]  # flat between 0.01 and 0.1: no edge to extend

