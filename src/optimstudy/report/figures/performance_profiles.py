"""Performance profiles (Dolan & Moré, as AlgoPerf scores): the share of problems each optimizer
reaches its target on within tau x the fastest optimizer's time, in steps and in seconds."""
from optimstudy.report import plotting
from optimstudy.report.plotting import Drawn, new_figure, style
from optimstudy.results import aggregates

TITLE = "Performance profiles: how often is each optimizer (nearly) the fastest?"
SPEC = "experiments/mnist_optimizers.toml"
ORDER = 85
METRICS = ()  # per-step metrics it reads (the report loads only these)
TAUS = (1, 1.5, 2, 4, 8)  # the table's columns


def figure(study) -> Drawn | None:
    profiles = aggregates.performance_profiles(study.main, study.reach)
    if profiles.empty or profiles["problems"].max() < 1:
        return None
    colors = plotting.optimizer_colors(study.runs["label"])
    with style():
        fig = new_figure(12, 4.2)
        for ax, unit in zip(fig.subplots(1, 2), ("steps", "seconds")):
            for optimizer, rows in profiles[profiles["unit"] == unit].groupby("optimizer"):
                ax.step(rows["tau"], rows["solved"], where="post", color=colors[optimizer], lw=1.8, label=optimizer)
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel(f"τ: within τ × the fastest optimizer's {unit} to target (log)")
            ax.set_ylabel("fraction of problems solved")
            ax.set_title(f"time to target in {unit}")
            ax.legend(fontsize=8, loc="lower right")
    problems = int(profiles["problems"].max())
    at = aggregates.performance_profiles(study.main, study.reach, taus=TAUS)
    at = at[at["unit"] == "steps"].assign(tau=lambda t: [f"τ = {v:g}" for v in t["tau"]])
    table = at.pivot_table(index="optimizer", columns="tau", values="solved", sort=False).map("{:.0%}".format)
    table = table.rename_axis(columns=None).rename_axis("optimizer (steps)").reset_index()
    caption = (f"Over {problems} problem{'s' * (problems != 1)} (problem × experiment, each optimizer at its best "
               "configuration, median time over seeds): the fraction each optimizer reaches the problem's target "
               "on within τ times the fastest optimizer's steps (left) or seconds (right); a curve at 1 for τ = 1 "
               "was fastest everywhere, and a problem never solved counts as a failure at every τ.")
    return Drawn(fig, caption, [r for ids in study.main["run_ids"] for r in ids], table=table)


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
