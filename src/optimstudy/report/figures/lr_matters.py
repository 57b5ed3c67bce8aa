"""One optimizer at a too small, the best and a too large lr: crawling, converging, diverging."""
import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from optimstudy.report import plotting
from optimstudy.report.plotting import GOOD, LARGE, SMALL, Drawn, loss_label, lr_text, mean_band, new_figure, style
from optimstudy.results import group_runs

TITLE = "The learning rate matters: too small, good, too large"
SPEC = "experiments/lr_sensitivity.toml"
ORDER = 30
METRICS = ("train_loss", "val_loss")  # per-step metrics it reads (the report loads only these)


def figure(study) -> Drawn | None:
    """One optimizer at a too small, the best and a too large lr: crawling, converging, diverging."""
    runs = study.runs
    main = study.main
    candidates = main[main["lrs"].map(len) >= 2]
    if candidates.empty:
        return None
    ranked = []
    for index, row in candidates.iterrows():
        members = group_runs(runs, row)
        ranked.append((bool(members["diverged"].any()), row["optimizer"] == "sgd", len(row["lrs"]), -index))
    row = candidates.loc[-max(ranked)[3]]
    members = group_runs(runs, row)
    members = members[members["last_step"] > 0]
    lrs = np.sort(members["lr"].unique())
    good = row["lr"] if pd.notna(row["lr"]) else lrs[0]
    diverged_lrs = np.sort(members.loc[members["diverged"] & (members["lr"] > good), "lr"].unique())
    chosen = {"too small": lrs[0], "best": good, "too large": diverged_lrs[0] if len(diverged_lrs) else lrs[-1]}
    shown = {}
    for name, lr in chosen.items():
        if not any(math.isclose(lr, other) for other in shown.values()):
            shown[name] = lr
    colors = {"too small": SMALL, "best": GOOD, "too large": LARGE}
    shown_runs = {name: members[np.isclose(members["lr"], lr)] for name, lr in shown.items()}
    diverged = pd.concat(list(shown_runs.values()))
    diverged = diverged[diverged["diverged"]]
    blowups = [int(r["diverged_at_step"]) if pd.notna(r["diverged_at_step"]) else int(r["last_step"])
               for _, r in diverged.iterrows()]
    last = int(members["last_step"].max())
    zoom = min(last, max(12, 4 * max(blowups))) if blowups and max(blowups) < last / 4 else None
    used = list(pd.concat(list(shown_runs.values()))["run_id"])
    curve = study.points(used, ["train_loss", "val_loss"])
    title = f"{row['optimizer']} on {row['problem']} ({row['experiment']})"
    loss = loss_label(members)
    finals = {}
    with style():
        fig = new_figure(15 if zoom else 12, 4.6)
        axes = fig.subplots(1, 3 if zoom else 2)
        train_ax, val_ax = axes[0], axes[-1]
        for name, at_lr in shown_runs.items():
            label = f"{name}: lr {lr_text(shown[name])} ({len(at_lr)} run{'s' * (len(at_lr) > 1)})"
            mine = curve[curve["run_id"].isin(at_lr["run_id"])]
            train = mine[mine["metric"] == "train_loss"]
            finals[name] = plotting.ends(mean_band(train_ax, train, color=colors[name], label=label, log=True,
                                                   lw=1.3))[1]
            mean_band(val_ax, mine[mine["metric"] == "val_loss"], color=colors[name], label=label, log=True, lw=1.3,
                      marker="o", ms=3)
            if zoom:
                mean_band(axes[1], train[train["step"] <= zoom], color=colors[name], label=label, log=True, lw=1.3,
                          marker=".", ms=4)
            for _, run in at_lr[at_lr["diverged"]].iterrows():
                step = run["diverged_at_step"] if pd.notna(run["diverged_at_step"]) else run["last_step"]
                for ax in axes:
                    ax.plot([step], [0.96], "x", color=colors[name], ms=10, mew=2.5,
                            transform=ax.get_xaxis_transform(), clip_on=False)
        train = curve[(curve["metric"] == "train_loss") & np.isfinite(curve["value"]) & (curve["value"] > 0)]
        if not train.empty:
            start = train.loc[train["step"] == train["step"].min(), "value"].max()
            train_ax.set_ylim(train["value"].min() * 0.5, start * 30)  # a blow-up leaves through the top
        for ax, what in ((train_ax, "training loss (per minibatch)"), (val_ax, "validation loss")):
            ax.set_ylabel(f"{what}, {loss} (log)")
        for ax in axes:
            ax.set_yscale("log")
            ax.set_xlabel("step (optimizer updates)")
        train_ax.set_title(f"{title}\ntraining loss")
        val_ax.set_title("validation loss")
        if zoom:
            axes[1].set_title(f"the first {zoom} steps: the blow-up")
            axes[1].set_ylabel(f"training loss, {loss} (log)")
        handles, labels = train_ax.get_legend_handles_labels()
        if blowups:
            handles.append(Line2D([], [], ls="", marker="x", color="0.3", ms=8, mew=2))
            span = f"{min(blowups)}-{max(blowups)}" if max(blowups) != min(blowups) else f"{min(blowups)}"
            labels.append(f"diverged (step {span})")
        train_ax.legend(handles, labels, fontsize=8)
    ends = ", ".join(f"{finals[name]:.3g} at lr {lr_text(shown[name])} ({name})" for name in shown
                     if name in finals and not (name == "too large" and blowups))
    outcome = (f"the too large one diverges (× at step {min(blowups)}) and its loss leaves the top of the panel"
               if blowups else "the largest lr tried did not diverge")
    caption = (f"{title} at the smallest lr tried, the best and a too large one, means over seeds: "
               + (f"the training loss ends at {ends}, while " if ends else "") + f"{outcome}.")
    return Drawn(fig, caption, used)


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
