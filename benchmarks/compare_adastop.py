"""optimstudy's seeds-until-decided design against AdaStop (Mathieu et al. 2023) on the same simulated studies.

    pip install adastop==0.1.3
    python benchmarks/compare_adastop.py --studies 300      # about 10 minutes on 2 cores

Both get the same results per study (optimstudy.results.calibration.studies: a shared seed effect of
2 sd plus each run's own noise), rounds of 5 seeds up to 20, alpha = 5% family-wise. optimstudy pairs
each seed's runs (sequential signed-rank, Holm) and adds seeds only to labels in open pairs; AdaStop
compares means by group-sequential permutation tests over the runs as unpaired samples (its design:
every interim adds n runs to each agent still in a comparison; K interims; B permutations). A
diverged run is the worst value: +inf for optimstudy, 1e6 for AdaStop (its means need a number).
Prints, per cell: the share of studies with any false "better" (equal labels) or the share deciding
the true difference, and the mean runs spent per label.
"""
import argparse
import contextlib
import io
import time

import numpy as np

from optimstudy.results import calibration

N, K = calibration.PER_ROUND, calibration.MAX_SEEDS // calibration.PER_ROUND


def adastop_study(values: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """(decided 'different' per pair with the right sign or not, mean runs per label) for one study."""
    from adastop import MultipleAgentsComparator

    labels = values.shape[0]
    comparator = MultipleAgentsComparator(n=N, K=K, B=10_000, alpha=0.05, seed=seed)
    names = [f"l{i}" for i in range(labels)]
    given = {name: [] for name in names}
    finite = np.where(np.isfinite(values), values, 1e6)
    for k in range(K):
        tracked = set(np.asarray(comparator.current_comparisons).ravel()) if k else set(range(labels))
        for i, name in enumerate(names):
            if k == 0 or i in tracked:
                given[name] = list(finite[i, :len(given[name]) + N])
        with contextlib.redirect_stdout(io.StringIO()):
            comparator.partial_compare({name: np.asarray(v) for name, v in given.items()}, verbose=False)
        if comparator.is_finished:
            break
    pairs = [(i, j) for i in range(labels) for j in range(i + 1, labels)]
    decisions = np.array([comparator.decisions[str(np.array([i, j]))] for i, j in pairs])
    return decisions, float(np.mean([len(v) for v in given.values()]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=300)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(2026)
    cells = [("no difference, normal, 4 labels", [0.0] * 4, "normal"),
             ("no difference, t(3), 4 labels", [0.0] * 4, "t3"),
             ("no difference, lognormal, 4 labels", [0.0] * 4, "lognormal"),
             ("d = 0.5", [0.5, 0.0], "normal"), ("d = 1", [1.0, 0.0], "normal"), ("d = 2", [2.0, 0.0], "normal")]
    print("| cell | optimstudy: false or found | optimstudy: runs per label | AdaStop: false or found | "
          "AdaStop: runs per label |\n|---|---|---|---|---|")
    for name, shifts, kind in cells:
        started = time.perf_counter()
        values = calibration.studies(rng, args.studies, calibration.MAX_SEEDS, shifts, kind)
        ours = calibration.sequential_design(values)
        null = not any(shifts)
        if null:
            our_rate = ours["decided"].any(-1).mean()
        else:
            our_rate = (ours["decided"][:, 0] & (ours["sign"][:, 0] > 0)).mean()
        theirs, spent = [], []
        for study in range(args.studies):
            decisions, runs = adastop_study(values[study], seed=study)
            theirs.append(decisions)
            spent.append(runs)
        theirs = np.array(theirs)
        # AdaStop's "larger": the first agent's mean is larger, i.e. worse here (lower is better)
        their_rate = (np.isin(theirs, ["larger", "smaller"]).any(-1).mean() if null
                      else (theirs[:, 0] == "larger").mean())
        print(f"| {name} | {our_rate:.1%} | {ours['seeds'].mean():.1f} | {their_rate:.1%} | {np.mean(spent):.1f} |"
              f"  <!-- {time.perf_counter() - started:.0f} s -->", flush=True)
    print(f"\n{args.studies} studies per cell; rounds of {N} seeds, at most {calibration.MAX_SEEDS}.")


if __name__ == "__main__":
    main()
