"""The verdict is the product: its false-positive rate and power, measured by simulation.

The fast tests here use numpy and scipy only: simulated studies in which the truth is known (no
difference, or a shift of 0.5, 1 or 2 noise standard deviations), through the same functions the
report uses (comparison.paired_t_pvalues, comparison.holm, comparison.pairwise_verdicts). The end-to-
end test runs real sweeps through the CLI on a user module whose runs differ only by noise no seed
controls.
"""
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optimstudy import results
from optimstudy.results import aggregates, calibration, comparison

SIMULATIONS = 2000


def allowed(simulations: int = SIMULATIONS) -> float:
    """5% plus three simulation standard errors: a calibrated test stays under it (~0.1% chance not to)."""
    return comparison.ALPHA + 3 * math.sqrt(comparison.ALPHA * (1 - comparison.ALPHA) / simulations)


@pytest.mark.parametrize("noise", calibration.NOISES)
def test_false_positives_of_one_pair_and_of_a_family_stay_at_5_percent(noise):
    rng = np.random.default_rng(2026)
    for seeds in calibration.SEED_COUNTS:
        pair = calibration.pair_rate(rng, SIMULATIONS, seeds, noise)
        family = calibration.family_rate(rng, SIMULATIONS, seeds, noise)
        rank = calibration.rank_rate(rng, SIMULATIONS, seeds, noise)
        assert pair <= allowed(), f"one pair, {noise} noise, {seeds} seeds: {pair:.1%} false 'better'"
        assert family <= allowed(), f"6 pairs with Holm, {noise} noise, {seeds} seeds: {family:.1%}"
        assert rank <= allowed(), f"rank test, {noise} noise, {seeds} seeds: {rank:.1%}"


def test_without_holm_a_family_of_six_pairs_is_wrong_far_more_often():
    """The reason for the family-wise control: six uncorrected pairs give a false winner ~20% of the time."""
    rng = np.random.default_rng(7)
    values = calibration.results(rng, SIMULATIONS, 5, calibration.FAMILY, "normal")
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    p = np.stack([comparison.paired_t_pvalues(values[:, i] - values[:, j]) for i, j in pairs], axis=-1)
    raw = np.mean((p < comparison.ALPHA).any(axis=-1))
    corrected = np.mean((comparison.holm(p) < comparison.ALPHA).any(axis=-1))
    assert raw > 0.12 and corrected <= allowed()


def test_power_grows_with_seeds_and_effect():
    rng = np.random.default_rng(11)
    power = {(seeds, effect): calibration.pair_rate(rng, SIMULATIONS, seeds, "normal", effect)
             for seeds in (3, 5, 10, 20) for effect in calibration.EFFECTS}
    for effect in calibration.EFFECTS:
        assert power[(3, effect)] < power[(10, effect)] < power[(20, effect)] or power[(20, effect)] > 0.99
    assert power[(10, 2.0)] > 0.9 and power[(20, 1.0)] > 0.75 and power[(3, 0.5)] < 0.15


def test_the_old_percentile_bootstrap_was_anti_conservative_and_the_t_test_is_not():
    """Three differences of one sign: the bootstrap interval (their min..max) excluded 0 (p = 0.25 under
    the null); the t-test asks for the spread to be small against the mean."""
    found = comparison.compare({0: 0.30, 1: 0.41, 2: 0.52}, {0: 0.20, 1: 0.21, 2: 0.22}, "minimize", ("sgd", "adam"))
    assert found["test"] == "paired t-test" and found["p_value"] > 0.05
    verdict = comparison.decide(pd.DataFrame([found]))
    assert not verdict["decided"].iloc[0] and verdict["verdict"].iloc[0] == "not distinguishable with 3 seeds"


def family_frame(values: np.ndarray, labels) -> pd.DataFrame:
    """best_configurations-like rows for one problem: each label's objective per seed."""
    return pd.DataFrame({"experiment": "sim", "problem": "p", "setting_key": "", "optimizer": labels,
                         "metric": "val_loss", "direction": "minimize", "seeds": values.shape[1],
                         "seed_values": [dict(enumerate(row)) for row in values], "vary": "init,order"})


def test_the_reports_verdicts_make_the_same_decisions_as_the_simulated_procedure():
    """pairwise_verdicts (what the page shows) decides exactly where the vectorized procedure does."""
    rng = np.random.default_rng(3)
    values = calibration.results(rng, 150, 5, 4, "t3", shifts=[0.0, 0.0, 0.8, 1.6])
    labels = ["a", "b", "c", "d"]
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    p = np.stack([comparison.paired_t_pvalues(values[:, i] - values[:, j]) for i, j in pairs], axis=-1)
    expected = comparison.holm(p) < comparison.ALPHA
    for simulation in range(len(values)):
        verdicts = comparison.pairwise_verdicts(family_frame(values[simulation], labels))
        assert list(zip(verdicts["a"], verdicts["b"])) == [(labels[i], labels[j]) for i, j in pairs]
        assert verdicts["decided"].tolist() == expected[simulation].tolist()
        assert np.allclose(verdicts["p_holm"], comparison.holm(p[simulation]))
    assert 0 < expected.sum() < expected.size  # both kinds of decision were exercised


def test_a_best_configuration_chosen_and_tested_on_the_same_seeds_says_better_too_often():
    """Under the null, a label tuned over 5 equal configurations against one with a single
    configuration: the best of 5 noisy means, tested on the seeds that chose it, is falsely "better"
    more often than 5%; tested on new seeds, it is not. Why the verdicts test the confirmation seeds."""
    rng, simulations, seeds, configurations = np.random.default_rng(11), 20_000, 3, 5
    seed_effect = rng.normal(size=(simulations, 1, seeds))
    tuned = seed_effect + rng.normal(size=(simulations, configurations, seeds))
    chosen = tuned[np.arange(simulations), tuned.mean(axis=2).argmin(axis=1)]
    single = seed_effect[:, 0] + rng.normal(size=(simulations, seeds))
    new_effect = rng.normal(size=(simulations, seeds))
    confirmed = ((new_effect + rng.normal(size=(simulations, seeds)))
                 - (new_effect + rng.normal(size=(simulations, seeds))))
    on_tuning_seeds = (comparison.paired_t_pvalues(chosen - single) < comparison.ALPHA).mean()
    on_new_seeds = (comparison.paired_t_pvalues(confirmed) < comparison.ALPHA).mean()
    assert on_new_seeds <= allowed(simulations) < on_tuning_seeds


def test_the_verdict_tests_the_confirmation_seeds_where_both_labels_have_them():
    rows = []
    for label, tuning, confirmation in (("tuned", [0.1, 0.25, 0.3], [1.3, 0.9, 1.1, 1.0]),
                                        ("single", [1.1, 1.2, 1.35], [1.0, 1.1, 0.9, 1.2])):
        rows.append({"experiment": "sim", "problem": "p", "setting_key": "", "optimizer": label, "metric": "val_loss",
                     "direction": "minimize", "seeds": 3, "vary": "init,order", "diverged_seeds": 0,
                     "mean": np.mean(tuning), "seed_values": dict(enumerate(tuning)),
                     "confirm_mean": np.mean(confirmation),
                     "configurations": 5 if label == "tuned" else 1,
                     "confirm_seed_values": dict(enumerate(confirmation, 100))})
    best = pd.DataFrame(rows)
    confirmed = comparison.pairwise_verdicts(best).iloc[0]
    expected = comparison.compare(rows[1]["confirm_seed_values"], rows[0]["confirm_seed_values"], "minimize")
    assert confirmed["tested_on"] == "confirmation" and confirmed["seeds"] == 4 and not confirmed["decided"]
    assert confirmed["p_value"] == pytest.approx(expected["p_value"]) and "confirmation seeds" in confirmed["evidence"]
    answer = results.answers(best, comparison.pairwise_verdicts(best))
    assert answer["basis"].iloc[0].startswith("4 new seeds varying init, order")
    assert answer["ranking"].iloc[0] == "single ≈ tuned"  # ordered by the means tested: 1.05 and 1.075
    without = best.assign(confirm_seed_values=[{}, {}])
    tuned_only = comparison.pairwise_verdicts(without)
    assert tuned_only["tested_on"].iloc[0] == "tuning" and tuned_only["decided"].iloc[0]  # 0.1-0.3 vs 1.1-1.3
    assert "add [confirm] seeds for an unbiased test" in results.answers(without, tuned_only)["basis"].iloc[0]


def test_identical_replicates_never_say_better():
    """Every seed the same (a zero-initialised model trained on the full batch): no evidence about noise."""
    adam = {seed: 0.1234567 for seed in range(5)}
    sgd = {seed: 0.1234567 + 8e-15 for seed in range(5)}
    far = {seed: 0.5 for seed in range(5)}  # a real, deterministic difference is still no evidence about noise
    verdicts = comparison.pairwise_verdicts(family_frame(np.array([list(adam.values()), list(sgd.values()),
                                                                    list(far.values())]), ["adam", "sgd", "other"]))
    assert verdicts["outcome"].tolist() == ["no variation"] * 3
    assert not verdicts["verdict"].str.contains("better").any()
    assert verdicts["evidence"].str.contains("vary the data split").all()
    varied = family_frame(np.array([list(adam.values()), list(sgd.values())]), ["adam", "sgd"]).assign(
        vary="init,order,data")
    assert "may be the same computation" in comparison.pairwise_verdicts(varied)["evidence"].iloc[0]


def test_a_rank_test_says_when_it_can_never_decide_and_handles_diverged_seeds():
    diverged = {seed: math.inf for seed in range(3)}
    fine = {seed: 0.1 + 0.01 * seed for seed in range(3)}
    three = comparison.decide(pd.DataFrame([comparison.compare(diverged, fine, "minimize", ("big", "small"))]))
    assert three["test"].iloc[0] == "Mann-Whitney" and three["outcome"].iloc[0] == "undecidable"
    assert three["verdict"].iloc[0] == "undecidable with 3 and 3 seeds"
    five = comparison.decide(pd.DataFrame([comparison.compare({s: math.inf for s in range(5)},
                                                              {s: 0.1 + 0.01 * s for s in range(5)}, "minimize",
                                                              ("big", "small"))]))
    assert five["verdict"].iloc[0] == "small better" and five["p_value"].iloc[0] == pytest.approx(2 / 252)


def test_the_exact_rank_test_agrees_with_scipy_without_ties_and_enumerates_ties():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(5)
    for n, m in ((3, 4), (5, 5), (6, 8)):
        a, b = rng.normal(size=n), rng.normal(0.8, size=m)
        assert comparison.rank_test_pvalue(a, b) == pytest.approx(mannwhitneyu(a, b, method="exact").pvalue)
    # with ties (diverged seeds are all +inf): scipy's exact permutation test of the same statistic
    from scipy.stats import permutation_test, rankdata

    def rank_sum(x, y):
        return rankdata(np.concatenate([x, y]))[:len(x)].sum()

    for a, b in (([1.0, 2.0, math.inf], [3.0, 4.0, math.inf]), ([1.0, math.inf, math.inf, 2.0], [3.0, 4.0, 5.0, 6.0])):
        reference = permutation_test((a, b), rank_sum, permutation_type="independent", alternative="two-sided",
                                     n_resamples=np.inf).pvalue
        assert comparison.rank_test_pvalue(a, b) == pytest.approx(reference)


def test_holm_agrees_with_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(9)
    for size in (1, 3, 6, 28):
        p = rng.uniform(0, 0.2, size)
        assert np.allclose(comparison.holm(p), multipletests(p, method="holm")[1])


def test_intervals_cover_as_they_say():
    rng = np.random.default_rng(13)
    for n in (3, 6, 10):
        values = rng.lognormal(size=(SIMULATIONS, n * 2))
        intervals = [comparison.median_interval(row) for row in values]  # 6, 12 and 20 values: order statistics
        assert {kind for _, _, kind in intervals} == {"order"}
        inside = [low <= 1.0 <= high for low, high, _ in intervals]  # the lognormal's median is 1
        assert np.mean(inside) >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / SIMULATIONS)
        normal = rng.normal(size=(SIMULATIONS, n))
        covered = [low <= 0.0 <= high for low, high, _ in map(comparison.mean_interval, normal)]
        assert abs(np.mean(covered) - 0.95) < 3 * math.sqrt(0.05 * 0.95 / SIMULATIONS)
    assert comparison.mean_interval([0.2, 0.4])[2] == "range" and comparison.median_interval(range(5))[2] == "range"
    assert comparison.median_interval(range(6)) == (0.0, 5.0, "order")


def test_ranking_groups_what_is_decided_apart():
    verdicts = pd.DataFrame({"a": ["adam", "adam", "rmsprop"], "b": ["rmsprop", "sgd", "sgd"],
                             "better": ["rmsprop", "sgd", "rmsprop"], "decided": [True, True, False]})
    assert comparison.ranking(["rmsprop", "sgd", "adam"], verdicts) == "rmsprop ≈ sgd > adam"
    verdicts.loc[2, "decided"] = True
    assert comparison.ranking(["rmsprop", "sgd", "adam"], verdicts) == "rmsprop > sgd > adam"
    verdicts["decided"] = [True, False, False]  # only rmsprop > adam: the chain would misstate a pair
    assert comparison.ranking(["rmsprop", "sgd", "adam"], verdicts) == \
        "rmsprop (a), sgd (ab), adam (b); a shared letter: not decided apart"


def read_answer(line: str) -> tuple[list[str], set, set]:
    """(labels in order, pairs stated not decided apart, pairs stated decided with the first better) of a
    ranking line, in either of its two forms."""
    if "(" not in line:  # 'x ≈ y > z'
        groups = [group.split(" ≈ ") for group in line.split(" > ")]
        labels = [x for g in groups for x in g]
        together = {frozenset((x, y)) for g in groups for x in g for y in g if x != y}
        better = {(x, y) for i, g in enumerate(groups) for later in groups[i + 1:] for x in g for y in later}
        return labels, together, better
    listed, _, rest = line.partition("; a shared letter")
    letters = dict(item[:-1].split(" (") for item in listed.split(", "))
    labels = list(letters)
    together = {frozenset((x, y)) for x in labels for y in labels if x != y and set(letters[x]) & set(letters[y])}
    if "decided: " in rest:  # a circle: each decided pair is stated
        better = {tuple(p.split(" > ")) for p in rest.split("decided: ")[1].split(", ")}
    else:
        better = {(x, y) for i, x in enumerate(labels) for y in labels[i + 1:] if frozenset((x, y)) not in together}
    return labels, together, better


@pytest.mark.parametrize("size", [3, 4])
def test_an_answer_line_states_nothing_false_for_every_pattern_of_decided_pairs(size):
    """Each pair undecided or decided either way (3**3 and 3**6 patterns, circles included): the line
    lists every label once, says 'not decided apart' of exactly the undecided pairs, and 'better' of
    exactly the decided ones, the right way round."""
    import itertools

    labels = ["adam", "sgd", "rmsprop", "lion"][:size]
    pairs = list(itertools.combinations(labels, 2))
    forms = set()
    for pattern in itertools.product((None, 0, 1), repeat=len(pairs)):
        rows = [{"a": a, "b": b, "better": "" if who is None else (a, b)[who], "decided": who is not None}
                for (a, b), who in zip(pairs, pattern)]
        line = comparison.ranking(labels, pd.DataFrame(rows))
        listed, together, better = read_answer(line)
        assert sorted(listed) == sorted(labels), line
        for row in rows:
            pair = frozenset((row["a"], row["b"]))
            loser = row["b"] if row["better"] == row["a"] else row["a"]
            if row["decided"]:
                assert pair not in together and (row["better"], loser) in better, (line, rows)
            else:
                assert pair in together, (line, rows)
        forms.add("letters" if "(" in line else "chain")
    assert forms == {"letters", "chain"}


def test_aggregates_across_problems_match_rliable():
    from rliable import metrics  # its bootstrap module (rliable.library) fails to import under pandas 3

    rng = np.random.default_rng(17)
    rows = []
    for problem in range(6):
        for label, shift in (("a", 0.0), ("b", 0.4), ("c", 0.4)):
            rows.append({"experiment": "e", "problem": f"p{problem}", "setting_key": "", "optimizer": label,
                         "direction": "minimize", "seeds": 5,
                         "seed_values": dict(enumerate(1.0 + shift + 0.3 * rng.normal(size=5)))})
    best = pd.DataFrame(rows)
    scores = aggregates._scores(best)
    per_label = {label: np.stack([scores[key][label] for key in sorted(scores)], axis=1) for label in "abc"}
    iqm, improvement = aggregates.across_problems(best, resamples=300)
    found = iqm.set_index("optimizer")
    for label in "abc":
        assert found.loc[label, "iqm"] == pytest.approx(metrics.aggregate_iqm(per_label[label]))
        assert found.loc[label, "low"] <= found.loc[label, "iqm"] <= found.loc[label, "high"]
    ab = improvement.set_index(["a", "b"]).loc[("a", "b")]
    assert ab["probability"] == pytest.approx(metrics.probability_of_improvement(per_label["a"], per_label["b"]))
    assert ab["low"] > 0.5  # a is better on every problem by 1.3 noise sd: the interval says so


# ---- end to end: the CLI on noise that no seed controls -----------------------------------------

NOISY_PROBLEMS = '''
"""Small regression problems whose initial weights come from fresh entropy: no seed controls them."""
import os

import torch
from torch import nn

from optimstudy.problems.registry import Problem


def data_for(index):
    def make(generator):
        x = torch.randn(2000, 50, generator=generator)  # 50 weights: the init's error is a chi-square, 50 dof
        w = torch.linspace(-1, 1, 50) * (1 + index % 3)
        return x, x @ w + 0.5 * torch.randn(2000, generator=generator)
    return make


class FreshLinear(nn.Linear):
    def reset_parameters(self):
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator))
            self.bias.zero_()


def fresh_linear(data):
    return FreshLinear(data.input_size, 1)


for index in range({problems}):
    globals()[f"p{{index:02d}}"] = Problem(data=data_for(index), make_model=fresh_linear, task="regression")
'''

NOISY_SPEC = '''
name = "noise-{part}"
problems = [{problems}]
steps = 15
batch_size = 1280           # the whole training split (2,000 rows less 20% test, less 20% validation)
eval_every = 15
seeds = [0, 1, 2, 3, 4]
stack_seeds = true          # a label's 5 seeds as one model (torch.optim:SGD, by import path, runs them apart)

[optimizers.sgd]
lr = [0.2]

[optimizers.torch_sgd]
optimizer = "torch.optim:SGD"
lr = [0.2]

[optimizers.sgd_nomomentum]
optimizer = "sgd"
lr = [0.2]
momentum = 0.0

[optimizers.slow]                    # 10x too small: clearly worse after 15 steps
optimizer = "sgd"
lr = [0.02]
'''


def noise_study(folder: Path, problems: int, part: str = "a") -> pd.DataFrame:
    """Sweep `problems` noisy problems x 4 labels x 5 seeds through the CLI; the study's verdicts."""
    from optimstudy.results.study import Study
    from optimstudy.tracking.reader import load_runs

    (folder / "noisy.py").write_text(NOISY_PROBLEMS.format(problems=problems))
    names = ", ".join(f'"noisy:p{i:02d}"' for i in range(problems))
    (folder / f"noise_{part}.toml").write_text(NOISY_SPEC.format(part=part, problems=names))
    env = {**os.environ, "PYTHONPATH": str(folder)}
    done = subprocess.run([sys.executable, "-m", "optimstudy", "sweep", f"noise_{part}.toml", "--workers", "2"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = load_runs(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}", experiments=[f"noise-{part}"])
    return Study(frame).verdicts


TWINS = {"sgd", "torch_sgd", "sgd_nomomentum"}


def false_winners_and_found_worse(verdicts: pd.DataFrame) -> tuple[int, int]:
    """(problems naming a winner among the twins, problems where every twin is decided better than slow)."""
    false, found = 0, 0
    for _, family in verdicts.groupby("problem"):
        twins = family[family["a"].isin(TWINS) & family["b"].isin(TWINS)]
        against = family[family["a"].isin({"slow"}) | family["b"].isin({"slow"})]
        false += bool(twins["decided"].any())
        found += bool(len(against) == 3 and (against["decided"] & (against["better"] != "slow")).all())
    return false, found


@pytest.mark.slow
@pytest.mark.study
def test_end_to_end_no_false_winner_among_twins_and_the_worse_lr_found(tmp_path):
    verdicts = noise_study(tmp_path, problems=12)
    assert verdicts["problem"].nunique() == 12 and (verdicts["seeds"] == 5).all()
    assert (verdicts["outcome"] != "no variation").all()  # fresh entropy: the runs do vary
    false, found = false_winners_and_found_worse(verdicts)
    assert false <= most_false_winners_a_calibrated_verdict_names(12), verdicts[verdicts["decided"]].to_string()
    assert found >= 11


def most_false_winners_a_calibrated_verdict_names(problems: int, failing_once_in: int = 1000) -> int:
    """The count of problems with a false winner that a verdict wrong in 5% of problems exceeds only
    once in `failing_once_in` studies: the noise is fresh each run, so this test must allow for luck.
    For 12 problems it is 4 (more than 2 happens 2 in 100 times; more than 4, 2 in 10,000)."""
    from scipy.stats import binom

    return next(k for k in range(problems + 1) if binom.sf(k, problems, comparison.ALPHA) < 1 / failing_once_in)


if __name__ == "__main__":  # the README's numbers: 60 problems
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        found_verdicts = noise_study(Path(folder), problems=int(sys.argv[1]) if len(sys.argv) > 1 else 60)
        print(textwrap.dedent(f"""
            problems: {found_verdicts['problem'].nunique()}
            twin pairs decided (false): {int(found_verdicts[found_verdicts['a'].isin(TWINS)
                                                            & found_verdicts['b'].isin(TWINS)]['decided'].sum())}
            problems with a false winner, problems where slow was found worse: {false_winners_and_found_worse(
                found_verdicts)}"""))
