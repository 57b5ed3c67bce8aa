"""Who is better: per problem and setting, each pair of optimizer labels at their best
configurations (statistics in comparison.py), and the answer in one line ("adam ≈ sgd > slow")."""
import math

import numpy as np
import pandas as pd

from optimstudy.results import comparison
from optimstudy.results.tables import best_configurations


def verdicts(runs: pd.DataFrame, best: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per experiment x problem x setting, each pair of optimizer labels at their best configurations:
    "A better" (decided after Holm's adjustment over the pairs of that problem and setting), "not
    distinguishable with N seeds", "no variation…" or "undecidable…", with the evidence and the seeds
    likely needed (see results/comparison.py). What the sweep prints and puts in --json."""
    return comparison.pairwise_verdicts(best_configurations(runs) if best is None else best)


ANSWER_COLUMNS = ["experiment", "problem", "setting_key", "metric", "ranking", "basis", "seeds", "pairs", "vary",
                  "undecided", "no_variation"]


def answer_basis(seeds: int, pairs: int, vary: str, tested_on: str = "tuning", chosen_from: int = 1) -> str:
    """What a ranking rests on, in words. `tested_on`: "confirmation" (new seeds, after the choice of
    each configuration) or "tuning" (the seeds that chose them); `chosen_from`: the most configurations
    any label's best was chosen from."""
    new = " new" if tested_on == "confirmation" else ""
    if seeds < comparison.MIN_SEEDS:
        return f"{seeds}{new} seed{'s' * (seeds != 1)}: a verdict needs at least {comparison.MIN_SEEDS}"
    if not pairs:
        return f"{seeds}{new} seeds, no pair tested: the seeds did not change the results"
    basis = f"{seeds}{new} seeds varying {vary.replace(',', ', ')}; Holm 5% over {pairs} pair{'s' * (pairs != 1)}"
    if tested_on == "tuning" and chosen_from > 1:  # the best of several on the same seeds looks better than it is
        basis += ("; tested on the seeds that chose the best configurations, which favours the label tuned over "
                  "more of them: add [confirm] seeds for an unbiased test")
    return basis


def answers(best: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per experiment x problem x setting, the answer in one line: the labels best first, in groups
    that are decided apart ("rmsprop ≈ sgd > adam"), and what would decide the rest."""
    rows = []
    if verdicts.empty:
        return pd.DataFrame(columns=ANSWER_COLUMNS)
    for (experiment, problem, setting), family in verdicts.groupby(["experiment", "problem", "setting_key"],
                                                                    sort=True):
        members = best[(best["experiment"] == experiment) & (best["problem"] == problem)
                       & (best["setting_key"] == setting) & (best["seeds"] > 0)]
        tested_on = "confirmation" if (family["tested_on"] == "confirmation").all() else "tuning"
        sign = np.where(members["direction"] == "minimize", 1.0, -1.0)
        means = members["confirm_mean"] if tested_on == "confirmation" else members["mean"]  # in the order tested
        order = members.assign(_share=members["diverged_seeds"] / members["seeds"],
                               _rank=(means * sign).fillna(math.inf)).sort_values(["_share", "_rank"])
        labels = [label for label in order["optimizer"] if label in set(family["a"]) | set(family["b"])]
        undecided = family[family["outcome"] == "not distinguishable"]
        rows.append({"experiment": experiment, "problem": problem, "setting_key": setting,
                     "metric": family["metric"].iloc[0], "ranking": comparison.ranking(labels, family),
                     "basis": answer_basis(int(family["seeds"].min()), int(family["pairs"].max()),
                                           family["vary"].iloc[0], tested_on,
                                           int(members.get("configurations", pd.Series([1])).max())),
                     "seeds": int(family["seeds"].min()), "pairs": int(family["pairs"].max()),
                     "vary": family["vary"].iloc[0],
                     "undecided": "; ".join(f"{r.a} vs {r.b}: " + (f"~{r.seeds_needed:.0f} seeds" if np.isfinite(
                         r.seeds_needed) else "no difference seen") for r in undecided.itertuples()),
                     "no_variation": "; ".join(f"{r.a} vs {r.b}" for r in family.itertuples()
                                               if r.outcome == "no variation")})
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)
