"""What a study that adds seeds until decided asks for next (`optimstudy sweep --until-decided`).

    from optimstudy.results.rounds import seeds_wanted
    seeds_wanted(study.best, study.verdicts, per_round=5, max_seeds=20)
    # [{'experiment': 'quickstart', 'problem': 'linreg', 'setting_key': '…', 'label': 'sgd',
    #   'seeds': [2, 3, 4, 5, 6]}, …]

A pair is open while it is undecided, short of max_seeds and not judged out of reach of that
budget (sequential.out_of_reach). Every label of an open pair gets the same new seeds, the next
ones after every seed its family has used, so the two sides of an open pair always share their
seeds: the test stays paired. A label whose pairs are all decided gets no more. With a shared seed
effect, pairing is worth more than giving the noisier label more seeds of its own, so both sides
of a pair grow together; the noise decides how many rounds a pair needs. calibration.sequential_design
simulates exactly this rule.
"""
import pandas as pd

OPEN_OUTCOMES = ("not distinguishable", "too few seeds")


def open_pairs(verdicts: pd.DataFrame, max_seeds: int) -> pd.DataFrame:
    """The verdicts a further round could still decide."""
    if verdicts.empty:
        return verdicts
    out_of_reach = verdicts.get("out_of_reach", pd.Series(False, index=verdicts.index)).fillna(False).astype(bool)
    return verdicts[verdicts["outcome"].isin(OPEN_OUTCOMES) & ~out_of_reach & (verdicts["seeds"] < max_seeds)]


def seeds_wanted(best: pd.DataFrame, verdicts: pd.DataFrame, per_round: int, max_seeds: int) -> list[dict]:
    """Per label of an open pair, the seeds of its next round (at most per_round, up to max_seeds)."""
    wanted = []
    for (experiment, problem, setting), family in open_pairs(verdicts, max_seeds).groupby(
            ["experiment", "problem", "setting_key"], sort=True):
        members = best[(best["experiment"] == experiment) & (best["problem"] == problem)
                       & (best["setting_key"] == setting)]
        used = [seed for row in members.itertuples() for values in (row.seed_values, row.confirm_seed_values)
                for seed in (values or {})] + [seed for row in members.itertuples()
                                               for seed in [*(getattr(row, "failed_seeds", None) or []),
                                                            *(getattr(row, "confirm_failed_seeds", None) or [])]]
        first = int(max(used, default=-1)) + 1
        count = min(per_round, max_seeds - int(family["seeds"].max()))
        if count <= 0:
            continue
        for label in sorted(set(family["a"]) | set(family["b"])):
            wanted.append({"experiment": experiment, "problem": problem, "setting_key": setting, "label": label,
                           "seeds": list(range(first, first + count))})
    return wanted
