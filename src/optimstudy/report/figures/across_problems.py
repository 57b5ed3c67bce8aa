"""Across problems, as Agarwal et al. (2021) recommend and rliable computes: the interquartile mean
(IQM) of normalised scores per optimizer, and the probability that a run of A beats a run of B,
each with a stratified bootstrap 95% interval."""
import numpy as np

from optimstudy.report import plotting
from optimstudy.report.plotting import Drawn, new_figure, style

TITLE = "Across problems: interquartile mean and probability of improvement"
SPEC = "experiments/quickstart.toml"
ORDER = 87
METRICS = ()  # per-step metrics it reads (the report loads only these)


def figure(study) -> Drawn | str | None:
    iqm, improvement = study.across
    if iqm.empty:
        problems = study.main[["experiment", "problem"]].drop_duplicates() if len(study.main) else ()
        return None if len(problems) == 0 else (
            f"one problem only ({problems['problem'].iloc[0]}): an across-problems summary needs two or more; "
            "that problem's verdict is in the answer above")
    colors = plotting.optimizer_colors(study.runs["label"])
    iqm = iqm.sort_values("iqm")
    with style():
        fig = new_figure(12, 0.9 + 0.42 * max(len(iqm), len(improvement)))
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
        for y, row in enumerate(iqm.itertuples()):
            left.errorbar(row.iqm, y, xerr=[[row.iqm - row.low], [row.high - row.iqm]], fmt="o", capsize=4,
                          color=colors[row.optimizer])
        left.set_yticks(range(len(iqm)), iqm["optimizer"])
        left.set_xlim(-0.03, 1.03)
        left.set_xlabel("IQM of normalised final objective (1 = best run on the problem)")
        left.set_title("interquartile mean over problems and seeds")
        for y, row in enumerate(improvement.itertuples()):
            decided = row.low > 0.5 or row.high < 0.5
            right.errorbar(row.probability, y, xerr=[[row.probability - row.low], [row.high - row.probability]],
                           fmt="o", capsize=4, color="#1b7837" if decided else "#777777")
        right.axvline(0.5, color="#b2182b", lw=1, ls="--")
        right.set_yticks(range(len(improvement)), [f"{a} vs {b}" for a, b in zip(improvement["a"], improvement["b"])])
        right.set_xlim(-0.03, 1.03)
        right.set_xlabel("P(a run of A beats a run of B on a problem)")
        right.set_title("probability of improvement (green: interval excludes 0.5)")
    problems = int(iqm["problems"].max())
    caption = (f"Over {problems} problems, each optimizer at its best configuration: each run's final objective "
               "normalised per problem (1 = the best run of any optimizer there, 0 = the worst; a diverged run "
               "scores 0). Left: the interquartile mean of those scores. Right: the probability that a run of A "
               "beats a run of B on a problem, averaged over the problems both ran. Bars: stratified bootstrap 95% "
               "intervals (seeds resampled within each problem). These describe the problems chosen; the verdicts "
               "per problem are the tests.")
    table = improvement.assign(**{"P(A better than B)": [f"{p:.2f} [{lo:.2f}, {hi:.2f}]" for p, lo, hi in zip(
        improvement["probability"], improvement["low"], improvement["high"])]})[["a", "b", "problems",
                                                                                 "P(A better than B)"]]
    run_ids = [r for ids in study.main["run_ids"] for r in ids]
    return Drawn(fig, caption, run_ids, table=table if np.isfinite(improvement["probability"]).all() else None)


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
