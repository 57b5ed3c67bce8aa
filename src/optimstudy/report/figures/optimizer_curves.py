"""Train and validation loss per step, each optimizer at its own best configuration; a panel per problem.

Runs without a validation split (val_fraction = 0) evaluate the whole training split instead
(train_full_loss): their lower panel shows that, and says so.
"""
import math

from optimstudy.report import plotting
from optimstudy.report.plotting import (
    Drawn,
    grid_axes,
    loss_label,
    lr_text,
    mean_band,
    new_figure,
    smoothing_window,
    style,
)

TITLE = "Optimizers compared at their best learning rates"
SPEC = "experiments/mnist_optimizers.toml"
ORDER = 10
METRICS = ("train_loss", "val_loss", "train_full_loss")  # per-step metrics it reads (the report loads only these)
# what each run's evaluations measured: the validation split, else the whole training split
EVALUATED = {"val_loss": "validation loss", "train_full_loss": "whole training split loss"}


def figure(study) -> Drawn | None:
    runs, main = study.runs, study.main
    sources = plotting.panel_sources(main)
    if not sources:
        return None
    colors = plotting.optimizer_colors(runs["label"])
    used = []
    with style():
        fig = new_figure(5.0 * min(len(sources), 3), 6.6 * math.ceil(len(sources) / 3))
        for (problem, experiment), (train_ax, val_ax) in zip(sources.items(), grid_axes(fig, len(sources), 2)):
            rows = main[(main["problem"] == problem) & (main["experiment"] == experiment)]
            members = runs[runs["run_id"].isin([r for ids in rows["run_ids"] for r in ids])]
            window = smoothing_window(members["last_step"].max())
            evaluated = set()
            for _, row in rows.iterrows():
                curve = study.points(row["run_ids"], METRICS)
                measured = next((m for m in EVALUATED if (curve["metric"] == m).any()), "val_loss")
                evaluated.add(measured)
                label = f"{row['optimizer']}  lr {lr_text(row['lr'])}  ({row['seeds']} seed{'s' * (row['seeds'] > 1)})"
                color = colors[row["optimizer"]]
                mean_band(train_ax, curve[curve["metric"] == "train_loss"], color=color, label=label, smooth=window,
                          log=True, lw=1.4)
                mean_band(val_ax, curve[curve["metric"] == measured], color=color, label=label, log=True,
                          lw=1.4, marker="o", ms=3)
                used += row["run_ids"]
            loss = loss_label(members)
            train_ax.set_title(f"{problem} ({experiment}): training loss")
            smoothed = f"\nper minibatch, mean of {window} steps" if window > 1 else ""
            train_ax.set_ylabel(f"train loss, {loss} (log){smoothed}")
            what = " / ".join(EVALUATED[m] for m in EVALUATED if m in evaluated)
            val_ax.set_title(f"{problem}: {what}" + ("\n(no validation split)" if evaluated == {"train_full_loss"}
                                                     else ""))
            val_ax.set_ylabel(f"{what}, {loss} (log)")
            for ax in (train_ax, val_ax):
                ax.set_yscale("log")
                ax.set_xlabel("step (optimizer updates)")
            train_ax.legend(fontsize=8, title="optimizer at its best lr", title_fontsize=8)
    metrics = ", ".join(sorted(set(main["metric"])))
    caption = ("Training loss (top, per minibatch, smoothed) and validation loss (bottom; without a validation "
               "split, the loss over the whole training split) against the step for each "
               f"optimizer at its own best learning rate (best mean final {metrics} over seeds, as the sweep "
               "ranked them); lines are means over seeds, bands ±1 sd.")
    return Drawn(fig, caption, used)


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
