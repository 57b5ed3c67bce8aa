"""Final objective against the learning rate, one line per optimizer; diverged runs marked, not dropped."""
import math

import pandas as pd
from matplotlib.lines import Line2D

from optimstudy.report import plotting
from optimstudy.report.plotting import WORST_EDGE, Drawn, grid_axes, new_figure, score_axis, style
from optimstudy.results import group_runs

TITLE = "Learning-rate sensitivity"
SPEC = "experiments/lr_sensitivity.toml"
ORDER = 20
METRICS = ()  # per-step metrics it reads (the report loads only these)


def figure(study) -> Drawn | None:
    runs, main = study.runs, study.main
    sources = plotting.panel_sources(main, need_lrs=2)
    if not sources:
        return None
    colors = plotting.optimizer_colors(runs["label"])
    used, any_diverged, any_level = [], False, False
    with style():
        fig = new_figure(6.8 * min(len(sources), 2), 4.3 * math.ceil(len(sources) / 2))
        for (problem, experiment), (ax,) in zip(sources.items(), grid_axes(fig, len(sources), columns=2)):
            rows = main[(main["problem"] == problem) & (main["experiment"] == experiment)]
            metric = rows["metric"].iloc[0]
            higher_better = rows["direction"].iloc[0] == "maximize"
            panel_diverged = False
            for stagger, (_, row) in enumerate(rows.iterrows()):
                members = group_runs(runs, row)
                members = members[members["objective"].notna() & (members["args"] == row["args"])]
                used += list(members["run_id"])
                color = colors[row["optimizer"]]
                stats = members[~members["diverged"]].groupby("lr")["objective"].agg(["mean", "std", "count"])
                if len(row["lrs"]) < 2:  # one lr tried (lr-free: Prodigy at 1.0): a level, not a point on the axis
                    any_level = True
                    draw_level(ax, row, members, stats, color)
                    continue
                ax.plot(stats.index, stats["mean"], "o-", color=color, ms=4, lw=1.5, label=row["optimizer"])
                if (stats["count"] > 1).any():
                    ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0),
                                    stats["mean"] + stats["std"].fillna(0), color=color, alpha=0.2, lw=0)
                if pd.notna(row["lr"]) and row["lr"] in stats.index:
                    ax.plot([row["lr"]], [stats.loc[row["lr"], "mean"]], "*", color=color, ms=13, mec="k", mew=0.6)
                bad = members[members["diverged"]]
                if not bad.empty:
                    any_diverged = panel_diverged = True
                    edge = WORST_EDGE - 0.035 * stagger
                    ax.plot(bad["lr"], [1 - edge if higher_better else edge] * len(bad), "x", color=color, ms=8,
                            mew=2, transform=ax.get_xaxis_transform(), clip_on=False)
            ax.set_xscale("log")
            ax.set_xlabel("learning rate (log scale)")
            score_axis(ax, metric)
            ax.set_title(f"{problem} ({experiment})")
            handles, labels = ax.get_legend_handles_labels()
            handles.append(Line2D([], [], ls="", marker="*", color="0.4", ms=11, mec="k"))
            labels.append("best lr")
            if panel_diverged:
                handles.append(Line2D([], [], ls="", marker="x", color="0.4", ms=8, mew=2))
                labels.append("diverged run (drawn at the worst edge)")
            ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    caption = ("Final value of the sweep's objective against the learning rate (log scale), one line per optimizer: "
               "means over seeds with ±1 sd bands, a star at each optimizer's best lr"
               + ("; runs that diverged are drawn as × at the worst edge of the panel instead of being dropped"
                  if any_diverged else "; no run diverged")
               + (". An optimizer tried at one lr only (a learning-rate-free method such as Prodigy, whose lr stays "
                  "1.0) has no lr axis: it is a dashed level across the panel (±1 sd band), to read against the "
                  "others' best." if any_level else "."))
    return Drawn(fig, caption, used)


def draw_level(ax, row, members, stats, color) -> None:
    """An optimizer tried at one lr: its mean over seeds as a dashed line across the whole lr axis."""
    label = f"{row['optimizer']}: one lr ({row['lrs'][0]:g}), drawn across"
    diverged = int(members["diverged"].sum())
    if diverged:
        label += f"; {diverged} of {len(members)} runs diverged"
    if stats.empty:  # every run diverged: nothing to draw a level at
        ax.plot([], [], ls="--", color=color, lw=1.5, label=label)
        return
    mean, std = stats["mean"].iloc[0], stats["std"].fillna(0).iloc[0]
    ax.axhline(mean, ls="--", color=color, lw=1.5, label=label)
    if stats["count"].iloc[0] > 1:
        ax.axhspan(mean - std, mean + std, color=color, alpha=0.12, lw=0)


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
