"""Who is better: per problem and setting, each pair of optimizer labels at their best
configurations (statistics in comparison.py), and the answer in one line ("adam ≈ sgd > slow")."""
import math

import numpy as np
import pandas as pd

from optimstudy.results import comparison
from optimstudy.results.tables import best_configurations


def verdicts(runs: pd.DataFrame, best: pd.DataFrame | None = None, horizons: dict | None = None) -> pd.DataFrame:
    """Per experiment x problem x setting, each pair of optimizer labels at their best configurations:
    "A better" (decided after Holm's adjustment over the pairs of that problem and setting), "not
    distinguishable with N seeds", "no variation…" or "undecidable…", with the evidence and the seeds
    likely needed (see results/comparison.py). `horizons`: experiment -> max_seeds of its sequential
    design (sequential.py). What the sweep prints and puts in --json."""
    return comparison.pairwise_verdicts(best_configurations(runs) if best is None else best, horizons)


ANSWER_COLUMNS = ["experiment", "problem", "setting_key", "metric", "ranking", "basis", "seeds", "pairs", "vary",
                  "undecided", "no_variation", "added_seeds", "decided_pairs"]


def seeds_text(counts) -> str:
    counts = sorted({int(c) for c in counts})
    if not counts:
        return "0 seeds"
    return f"{counts[0]} seed{'s' * (counts[0] != 1)}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]} seeds"


def answer_basis(seeds, pairs: int, vary: str, tested_on: str = "tuning", chosen_from: int = 1,
                 decided_seeds=(), sequential: str = "") -> str:
    """What a ranking rests on, in words. `seeds`: the seeds each pair was tested on (a count, or one per
    pair); `decided_seeds`: those of the pairs that were decided; `tested_on`: "confirmation" (new seeds,
    after the choice of each configuration), "every seed" or "tuning" (the seeds that chose them);
    `chosen_from`: the most configurations any label's best was chosen from; `sequential`: the design's
    words when seeds were added until decided."""
    seeds = [seeds] if isinstance(seeds, (int, np.integer)) else list(seeds)
    new = " new" if tested_on == "confirmation" else ""
    if max(seeds, default=0) < comparison.MIN_SEEDS:
        most = max(seeds, default=0)
        return f"{most}{new} seed{'s' * (most != 1)}: a verdict needs at least {comparison.MIN_SEEDS}"
    if not pairs:
        tested = seeds_text(seeds).replace(" seed", new + " seed")
        return f"{tested}, no pair tested: the seeds did not change the results"
    shown = decided_seeds if len(decided_seeds) else seeds
    where = "decided on " if len(decided_seeds) else ""
    basis = (f"{where}{seeds_text(shown).replace(' seed', new + ' seed')} varying {vary.replace(',', ', ')}; "
             f"Holm 5% over {pairs} pair{'s' * (pairs != 1)}")
    if sequential:
        basis += f"; {sequential}"
    if tested_on == "tuning" and chosen_from > 1:  # the best of several on the same seeds looks better than it is
        basis += ("; tested on the seeds that chose the best configurations, which favours the label tuned over "
                  "more of them: add [confirm] seeds for an unbiased test")
    return basis


def answers(best: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per experiment x problem x setting, the answer in one line: every label, best first, grouped so
    that nothing on the line is false (comparison.ranking), what it rests on, and what would decide the
    rest."""
    rows = []
    if verdicts.empty:
        return pd.DataFrame(columns=ANSWER_COLUMNS)
    for (experiment, problem, setting), family in verdicts.groupby(["experiment", "problem", "setting_key"],
                                                                    sort=True):
        members = best[(best["experiment"] == experiment) & (best["problem"] == problem)
                       & (best["setting_key"] == setting) & (best["seeds"] > 0)]
        tested_on = family["tested_on"].iloc[0] if family["tested_on"].nunique() == 1 else "tuning"
        sign = np.where(members["direction"] == "minimize", 1.0, -1.0)
        means = members["confirm_mean"] if tested_on == "confirmation" else members["mean"]  # in the order tested
        order = members.assign(_share=members["diverged_seeds"] / members["seeds"],
                               _rank=(means * sign).fillna(math.inf)).sort_values(["_share", "_rank"])
        compared = set(family["a"]) | set(family["b"])
        labels = [label for label in order["optimizer"] if label in compared]
        ranking = comparison.ranking(labels, family)
        metric = family["metric"].iloc[0]
        others = [f"{row.optimizer}: ranked on {row.metric}, not compared" for row in order.itertuples()
                  if row.optimizer not in compared and row.metric != metric]
        if others:
            ranking += "; " + "; ".join(others)
        undecided = family[family["outcome"] == "not distinguishable"]
        sequential = family["test"].str.startswith("sequential").any()
        added = int(members.get("decide_seeds", pd.Series([0])).fillna(0).sum())
        design = (f"seeds added until decided: {added} run{'s' * (added != 1)} added"
                  + (f", {len(undecided)} pair{'s' * (len(undecided) != 1)} still open" if len(undecided) else "")
                  if sequential else "")
        rows.append({"experiment": experiment, "problem": problem, "setting_key": setting, "metric": metric,
                     "ranking": ranking,
                     "basis": answer_basis(family["seeds"].astype(int).tolist(), int(family["pairs"].max()),
                                           family["vary"].iloc[0], tested_on,
                                           int(members.get("configurations", pd.Series([1])).max()),
                                           family.loc[family["decided"], "seeds"].astype(int).tolist(), design),
                     "seeds": int(family["seeds"].min()), "pairs": int(family["pairs"].max()),
                     "vary": family["vary"].iloc[0],
                     "undecided": "; ".join(f"{r['a']} vs {r['b']}: " + ("out of reach of the seed budget, "
                                                                            if r.get("out_of_reach") else "")
                                            + comparison.seeds_needed_text(r) for r in undecided.to_dict("records")),
                     "no_variation": "; ".join(f"{r.a} vs {r.b}" for r in family.itertuples()
                                               if r.outcome == "no variation"),
                     "added_seeds": added, "decided_pairs": int(family["decided"].sum())})
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)
