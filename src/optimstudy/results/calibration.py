"""How often a verdict is wrong, and how often it finds a real difference, measured by simulation.

    python -m optimstudy.results.calibration              # docs/results.md's tables (a few minutes)
    python -m optimstudy.results.calibration --simulations 400 --quick

Each simulated optimizer's result on seed s is `seed effect[s] + noise`: the seed effect is shared
by every optimizer on that seed (the same initial weights, order and split), the noise is each
run's own, scaled to a standard deviation of 1. Noise shapes: normal, Student t with 3 degrees of
freedom (heavy tails) and lognormal (skewed). An effect of d is a shift of one optimizer by d
noise standard deviations.

- false positives of one pair: two optimizers with no difference, the share of simulations in
  which the paired t-test (comparison.paired_t_pvalues) says "better" at p < 0.05;
- false positives of a family: four optimizers with no difference (6 pairs), the share in which
  Holm's procedure (comparison.holm) declares any pair "better": the family-wise error rate;
- power: the same pair with a true difference of 0.5, 1 or 2 standard deviations;
- the rank test (different seeds on each side): the exact Mann-Whitney test, which is exact by
  construction; its table shows at which seed counts it can decide at all;
- the limit: one side skewed and wide (lognormal), the other narrow (normal, sd 0.1), equal means;
- seeds added until decided (sequential_design, the rule of results/rounds.py with the test of
  results/sequential.py): the family-wise false "better" under each null above and with diverging
  runs, and the seeds spent to decide a true difference against the fixed design at 80% power.
"""
import argparse
import math
import warnings

import numpy as np
from scipy import stats

from optimstudy.results import comparison, sequential

SEED_COUNTS = (3, 4, 5, 8, 10, 20)
EFFECTS = (0.5, 1.0, 2.0)
FAMILY = 4  # optimizers in the simulated family: 6 pairs
SEED_EFFECT = 2.0  # the shared per-seed effect, in noise standard deviations: pairing removes it


def noise(rng, shape, kind: str) -> np.ndarray:
    """Noise of one standard deviation, mean 0."""
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "t3":
        return rng.standard_t(3, shape) / np.sqrt(3.0)  # t(3) has variance 3
    if kind == "lognormal":
        draws = rng.lognormal(0.0, 1.0, shape)
        return (draws - np.exp(0.5)) / np.sqrt((np.e - 1) * np.e)
    raise ValueError(f"unknown noise {kind!r}: normal, t3 or lognormal")


NOISES = ("normal", "t3", "lognormal")


def results(rng, simulations: int, seeds: int, optimizers: int, kind: str, shifts=None) -> np.ndarray:
    """(simulations, optimizers, seeds) results: a shared seed effect plus each run's own noise."""
    shared = SEED_EFFECT * rng.standard_normal((simulations, 1, seeds))
    values = shared + noise(rng, (simulations, optimizers, seeds), kind)
    if shifts is not None:
        values += np.asarray(shifts, dtype=float)[None, :, None]
    return values


def pair_rate(rng, simulations: int, seeds: int, kind: str, effect: float = 0.0) -> float:
    """Share of simulations in which one pair is declared different (p < ALPHA, paired t-test)."""
    values = results(rng, simulations, seeds, 2, kind, [0.0, effect])
    p = comparison.paired_t_pvalues(values[:, 0] - values[:, 1])
    return float(np.mean(p < comparison.ALPHA))


def family_rate(rng, simulations: int, seeds: int, kind: str) -> float:
    """Share of simulations of FAMILY equal optimizers in which Holm declares any pair different."""
    values = results(rng, simulations, seeds, FAMILY, kind)
    pairs = [(i, j) for i in range(FAMILY) for j in range(i + 1, FAMILY)]
    p = np.stack([comparison.paired_t_pvalues(values[:, i] - values[:, j]) for i, j in pairs], axis=-1)
    return float(np.mean((comparison.holm(p) < comparison.ALPHA).any(axis=-1)))


def rank_rate(rng, simulations: int, seeds: int, kind: str, effect: float = 0.0) -> float:
    """Share of simulations with different seeds on each side declared different by Mann-Whitney."""
    a = noise(rng, (simulations, seeds), kind)
    b = noise(rng, (simulations, seeds), kind) + effect
    p = stats.mannwhitneyu(a, b, axis=-1, alternative="two-sided", method="exact").pvalue
    return float(np.mean(p < comparison.ALPHA))


def standard_error(rate: float, simulations: int) -> float:
    return float(np.sqrt(max(rate, comparison.ALPHA) * (1 - max(rate, comparison.ALPHA)) / simulations))


def table(simulations: int = 4000, seed: int = 0, seed_counts=SEED_COUNTS) -> list[dict]:
    """One row per noise shape x seed count: every rate above."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind in NOISES:
        for seeds in seed_counts:
            row = {"noise": kind, "seeds": seeds, "pair_null": pair_rate(rng, simulations, seeds, kind),
                   "family_null": family_rate(rng, simulations, seeds, kind),
                   "rank_null": rank_rate(rng, simulations, seeds, kind),
                   "rank_smallest_p": comparison.smallest_rank_p(seeds, seeds)}
            for effect in EFFECTS:
                row[f"power_{effect:g}"] = pair_rate(rng, simulations, seeds, kind, effect)
            rows.append(row)
    return rows


def markdown(rows: list[dict], simulations: int) -> str:
    lines = ["| noise | seeds | false “better”, one pair | any false “better” among 6 pairs (Holm) | "
             "power at 0.5 / 1 / 2 sd | rank test (other seeds): false “better”, smallest p |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        power = " / ".join(f"{row[f'power_{e:g}']:.0%}" for e in EFFECTS)
        never = " (never decides)" if row["rank_smallest_p"] >= comparison.ALPHA else ""
        lines.append(f"| {row['noise']} | {row['seeds']} | {row['pair_null']:.1%} | {row['family_null']:.1%} | "
                     f"{power} | {row['rank_null']:.1%}, {row['rank_smallest_p']:.2g}{never} |")
    error = standard_error(comparison.ALPHA, simulations)
    lines.append("")
    lines.append(f"{simulations:,} simulations per cell; a rate's simulation error is about ±{2 * error:.1%} "
                 f"(two standard errors at 5%).")
    return "\n".join(lines)


# ---- seeds added until decided (sequential.py) ---------------------------------------------------

PILOT, PER_ROUND, MAX_SEEDS = 5, 5, 20  # the simulated design: 5 seeds, then rounds of 5, up to 20


def studies(rng, simulations: int, seeds: int, shifts, kinds, spreads=None, diverge=None) -> np.ndarray:
    """(simulations, labels, seeds) results in "badness": a shared seed effect plus each run's own noise of
    its label's kind and spread, shifted; a run that diverges (probability per label) is +inf."""
    labels = len(shifts)
    kinds = [kinds] * labels if isinstance(kinds, str) else list(kinds)
    spreads = np.ones(labels) if spreads is None else np.asarray(spreads, dtype=float)
    shared = SEED_EFFECT * rng.standard_normal((simulations, 1, seeds))
    own = np.stack([noise(rng, (simulations, seeds), kind) * spread for kind, spread in zip(kinds, spreads)], axis=1)
    values = shared + own + np.asarray(shifts, dtype=float)[None, :, None]
    if diverge is not None:
        blown = rng.random(values.shape) < np.asarray(diverge, dtype=float)[None, :, None]
        values[blown] = np.inf
    return values


def sequential_design(values: np.ndarray, pilot: int = PILOT, per_round: int = PER_ROUND,
                      max_seeds: int = MAX_SEEDS, alpha: float = comparison.ALPHA) -> dict:
    """Run the design `optimstudy sweep --until-decided` runs on simulated results (simulations, labels,
    seeds): every label starts with `pilot` seeds; after each look (Holm over the family's sequential
    p-values), every label in a pair still open gets `per_round` more, until no pair is open or
    `max_seeds` is reached. A pair is open while undecided, short of max_seeds and not out of reach.
    Returns per simulation and pair: decided, the better side's sign; and the seeds each label ran."""
    simulations, labels, _ = values.shape
    pairs = [(i, j) for i in range(labels) for j in range(i + 1, labels)]
    with np.errstate(invalid="ignore"):  # inf - inf: both diverged, no sign (sequential.weighted_paths)
        differences = np.stack([values[:, i, :max_seeds] - values[:, j, :max_seeds] for i, j in pairs], axis=1)
    size, sign = sequential.weighted_paths(differences)
    weighted = size * sequential.weights(max_seeds, max_seeds)
    p_path = sequential.pvalues(np.maximum.accumulate(weighted, axis=-1), max_seeds)  # p after each look
    finite = np.where(np.isfinite(differences), differences, np.nan)
    seeds = np.full((simulations, labels), min(pilot, max_seeds))
    rows = np.arange(simulations)[:, None]
    while True:
        n = np.minimum(seeds[:, [i for i, _ in pairs]], seeds[:, [j for _, j in pairs]])  # (simulations, pairs)
        p = p_path[rows, np.arange(len(pairs))[None, :], n - 1]
        decided = comparison.holm(p) < alpha
        within = np.arange(max_seeds)[None, None, :] < n[..., None]
        seen = np.where(within, finite, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, spread = np.nanmean(seen, -1), np.nanstd(seen, -1, ddof=1)
        counted = np.isfinite(seen).sum(-1)
        gave_up = sequential.out_of_reach(mean, spread, counted, alpha / len(pairs), max_seeds)
        still = ~decided & ~gave_up & (n < max_seeds)
        wanting = np.zeros((simulations, labels), bool)
        for k, (i, j) in enumerate(pairs):
            wanting[:, i] |= still[:, k]
            wanting[:, j] |= still[:, k]
        if not wanting.any():
            break
        seeds = np.where(wanting, np.minimum(seeds + per_round, max_seeds), seeds)
    # the sign where each pair's evidence peaked within its own seeds (as sequential.test says it)
    peak = np.argmax(np.where(np.arange(max_seeds)[None, None, :] < n[..., None], weighted, -1.0), axis=-1)
    better_sign = np.take_along_axis(sign, peak[..., None], axis=-1)[..., 0]
    return {"decided": decided, "sign": better_sign, "seeds": seeds, "pairs": pairs}


NULL_CELLS = {  # equal means: any "better" is false
    "normal": {"kinds": "normal"}, "t(3)": {"kinds": "t3"}, "lognormal": {"kinds": "lognormal"},
    "unequal spread (sd 1, 1, 3, 3)": {"kinds": "normal", "spreads": [1, 1, 3, 3]},
    "every run diverges with probability 0.1": {"kinds": "normal", "diverge": [0.1] * 4},
}
# the stated limit: equal means, but one side skewed and wide, the other narrow (its median is not its mean)
SKEWED_AGAINST_NARROW = {"kinds": ["lognormal", "normal", "lognormal", "normal"], "spreads": [1, 0.1, 1, 0.1]}


def sequential_table(simulations: int = 2000, seed: int = 0) -> list[dict]:
    """The sequential design's family-wise false "better" (4 equal labels, 6 pairs) per noise, and the
    seeds it spends to decide one pair at d = 0.5, 1, 2 against the fixed design at 80% power."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, cell in [*NULL_CELLS.items(), ("lognormal against normal sd 0.1 (the limit)", SKEWED_AGAINST_NARROW)]:
        found = sequential_design(studies(rng, simulations, MAX_SEEDS, [0.0] * FAMILY, **cell))
        rows.append({"cell": name, "false_any": float(found["decided"].any(-1).mean()),
                     "seeds": float(found["seeds"].mean())})
    for effect in EFFECTS:
        found = sequential_design(studies(rng, simulations, MAX_SEEDS, [effect, 0.0], "normal"))
        decided, sign = found["decided"][:, 0], found["sign"][:, 0]  # the first label is worse by `effect`
        rows.append({"cell": f"d = {effect:g}", "decided": float((decided & (sign > 0)).mean()),
                     "wrong": float((decided & (sign < 0)).mean()), "seeds": float(found["seeds"].mean()),
                     "fixed_seeds": comparison._paired_seeds_for_power(effect, math.sqrt(2), comparison.ALPHA,
                                                                       comparison.POWER)})
    return rows


def limit_table(simulations: int = 4000, seed: int = 0, seed_counts=SEED_COUNTS) -> list[dict]:
    """The fixed design's false "better" when one side is skewed and wide and the other narrow (equal means):
    one pair (paired t-test) and a family of two of each (Holm over 6 pairs)."""
    rng = np.random.default_rng(seed)
    rows = []
    for seeds in seed_counts:
        values = studies(rng, simulations, seeds, [0.0] * FAMILY, **SKEWED_AGAINST_NARROW)
        pairs = [(i, j) for i in range(FAMILY) for j in range(i + 1, FAMILY)]
        p = np.stack([comparison.paired_t_pvalues(values[:, i] - values[:, j]) for i, j in pairs], axis=-1)
        rows.append({"seeds": seeds, "pair": float(np.mean(p[:, 0] < comparison.ALPHA)),
                     "family": float(np.mean((comparison.holm(p) < comparison.ALPHA).any(axis=-1)))})
    return rows


def sequential_markdown(rows: list[dict], simulations: int) -> str:
    lines = ["| no difference (4 labels, 6 pairs) | any false “better” | runs per label |", "|---|---|---|"]
    lines += [f"| {r['cell']} | {r['false_any']:.1%} | {r['seeds']:.1f} |" for r in rows if "false_any" in r]
    lines += ["", "| true difference (2 labels) | decided within 20 seeds | the wrong way | runs per label, mean | "
              "fixed design: seeds for 80% power |", "|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {r['decided']:.1%} | {r['wrong']:.1%} | {r['seeds']:.1f} | {r['fixed_seeds']:.0f} |"
              for r in rows if "decided" in r]
    lines += ["", f"{simulations:,} simulated studies per row: 5 seeds, then rounds of 5 to the labels of open pairs, "
              f"at most {MAX_SEEDS}; a shared seed effect of {SEED_EFFECT:g} sd; d in noise standard deviations."]
    return "\n".join(lines)


def limit_markdown(rows: list[dict], simulations: int) -> str:
    lines = ["| seeds | false “better”, one pair | any false “better” among 6 pairs (Holm) |", "|---|---|---|"]
    lines += [f"| {r['seeds']} | {r['pair']:.1%} | {r['family']:.1%} |" for r in rows]
    lines += ["", f"{simulations:,} simulations per row: lognormal noise (sd 1) against normal noise (sd 0.1), "
              "equal means."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulations", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(markdown(table(args.simulations, args.seed), args.simulations))
    print()
    print(limit_markdown(limit_table(args.simulations, args.seed), args.simulations))
    print()
    print(sequential_markdown(sequential_table(args.simulations, args.seed), args.simulations))


if __name__ == "__main__":
    main()
