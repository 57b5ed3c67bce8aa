"""Tuning-budget curves (Crowded Valley): the best configuration found after k tries, over random orders."""
import math

from matplotlib.ticker import MaxNLocator

from optimstudy.report import plotting
from optimstudy.report.plotting import Drawn, grid_axes, new_figure, score_axis, style
from optimstudy.results import aggregates

TITLE = "Tuning budget: how good is each optimizer after k configurations?"
SPEC = "experiments/mnist_optimizers.toml"
ORDER = 90
METRICS = ()  # per-step metrics it reads (the report loads only these)


def figure(study) -> Drawn | None:
    curves = aggregates.tuning_curves(study.runs, study.main)
    if curves.empty:
        return None
    colors = plotting.optimizer_colors(study.runs["label"])
    panels = list(curves.groupby(["problem", "experiment"], sort=False))
    with style():
        fig = new_figure(5.4 * min(len(panels), 3), 4.0 * math.ceil(len(panels) / 3))
        for ((problem, experiment), rows), (ax,) in zip(panels, grid_axes(fig, len(panels))):
            for optimizer, curve in rows.groupby("optimizer"):
                tried = curve[~curve["all_tried"]]
                single = len(tried) == 1  # one configuration (lr-free): its level, from k = 1 on
                ax.plot(tried["configurations"], tried["median"], "o-", color=colors[optimizer], ms=3, lw=1.5,
                        label=f"{optimizer} (one configuration)" if single else optimizer)
                ax.fill_between(tried["configurations"], tried["low"], tried["high"], color=colors[optimizer],
                                alpha=0.15, lw=0)
                if curve["all_tried"].any():  # every configuration tried: it stays at its best, dashed
                    ax.plot(curve["configurations"].iloc[len(tried) - 1:], curve["median"].iloc[len(tried) - 1:],
                            "--", color=colors[optimizer], lw=1.5)
            score_axis(ax, rows["metric"].iloc[0])
            ax.set_ylabel(f"best {rows['metric'].iloc[0]} so far (mean over seeds)")
            ax.set_xlabel("configurations tried (lr and arguments)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{problem} ({experiment})")
            ax.legend(fontsize=8)
    caption = ("The best mean final objective found after trying k of each optimizer's configurations, in random "
               "order: median over 200 orders, band 10-90%. An optimizer whose curve is good only at the right end "
               "is good only when tuned hard. A dashed line: every configuration of that optimizer tried, so its best "
               "stays (a learning-rate-free method run once is flat from k = 1).")
    used = [r for ids in study.main["run_ids"] for r in ids]
    return Drawn(fig, caption, used)


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
