"""The report's figures: one function per figure, each a function of the tidy frame alone.

    from optimstudy.tidy import load_runs
    from optimstudy import figures
    drawn = figures.lr_sensitivity(load_runs(experiments=["lr_sensitivity"]))
    if drawn is not None:                       # None: the store holds no runs for it
        figures.save(drawn.figure, "analysis/figures/lr_sensitivity")   # .png and .svg
        print(drawn.caption)

Figures are built with matplotlib's object API (no pyplot state), styled by seaborn, and averaged
with pandas first: seaborn's bootstrap intervals on a million points would take minutes.
Bands are ±1 standard deviation over seeds.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from optimstudy.optimizers import OPTIMIZERS
from optimstudy.problems import PROBLEMS, VALLEY_START
from optimstudy.report import best_configs, group_columns, main_configs, panel_sources, points, run_table

DPI = 110
WORST_EDGE = 0.96  # where diverged runs are drawn, as a fraction of the axis height from the best end
SMALL, GOOD, LARGE = "#4c72b0", "#55a868", "#c44e52"


def plain_number(value, _=None) -> str:
    """0.01, 200 and 50,000 on log axes, not 10^-2, 2x10^2 and 5x10^4."""
    return f"{value:,.0f}" if 1e4 <= abs(value) < 1e9 else f"{value:g}"


def minor_labels(digits):
    """Label the minor ticks of a narrow log axis whose leading digit is in `digits`."""
    def label(value, _):
        if value <= 0:
            return ""
        return plain_number(value) if round(value / 10 ** math.floor(math.log10(value))) in digits else ""
    return FuncFormatter(label)


PLAIN = FuncFormatter(plain_number)
LOSS_COLORS = {"mean_error": "#c44e52", "mse": "#55a868", "mae": "#8c8c8c", "huber": "#4c72b0"}
LOSS_NAMES = {"cross_entropy": "cross-entropy", "mse": "MSE", "mae": "MAE", "huber": "Huber",
              "mean_error": "mean error"}


@dataclass
class Drawn:
    figure: Figure
    caption: str  # one sentence: what the figure shows
    run_ids: list = field(default_factory=list)  # the runs it was drawn from
    note: str = ""  # a part left empty, and the spec that would fill it


def save(figure: Figure, stem, svg: bool = True) -> None:
    """stem.png for the page, and stem.svg for print (laid out once: the layout is most of the cost)."""
    for ax in figure.axes:
        if ax.get_xlabel().startswith("step"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            if axis.get_scale() == "log":
                axis.set_major_formatter(PLAIN)
                span = max(limits) / min(limits) if min(limits) > 0 else math.inf
                axis.set_minor_formatter(minor_labels(range(2, 10)) if span < 3 else minor_labels((2, 5))
                                         if span < 100 else NullFormatter())
    figure.savefig(f"{stem}.png", dpi=DPI)
    if svg:
        figure.set_layout_engine("none")
        figure.savefig(f"{stem}.svg")


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def style():
    return rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
                       "legend.framealpha": 0.85, "axes.titleweight": "bold"})


def optimizer_colors(names) -> dict:
    """The same colour for an optimizer in every figure: registry order first."""
    palette = sns.color_palette("tab10", 10) + sns.color_palette("Dark2", 8)
    order = list(OPTIMIZERS) + sorted(set(names) - set(OPTIMIZERS))
    return {name: palette[i % len(palette)] for i, name in enumerate(order)}


def loss_label(runs: pd.DataFrame) -> str:
    names = sorted(set(runs["loss"].dropna()))
    return ", ".join(LOSS_NAMES.get(n, n) for n in names) or "loss"


def smoothing_window(last_step: int) -> int:
    """Per-minibatch losses are noisy: average ~1% of a run's steps (at least 1)."""
    return max(1, int(last_step) // 100)


def seed_mean(curve: pd.DataFrame, smooth: int = 1) -> pd.DataFrame:
    """Per step: mean, sd, lowest and highest over seeds of a (run_id, step, value) curve."""
    wide = curve.pivot_table(index="step", columns="run_id", values="value", aggfunc="mean")
    wide = wide.where(np.isfinite(wide))
    if smooth > 1:
        wide = wide.rolling(smooth, min_periods=1).mean()
    return pd.DataFrame({"mean": wide.mean(axis=1), "sd": wide.std(axis=1), "low": wide.min(axis=1),
                         "high": wide.max(axis=1), "seeds": wide.notna().sum(axis=1)})


def mean_band(ax, curve: pd.DataFrame, *, color, label, smooth=1, log=False, **line):
    """The seed mean as a line with a ±1 sd band; on a log axis the band stops at the lowest seed."""
    stats = seed_mean(curve, smooth)
    if stats.empty:
        return stats
    ax.plot(stats.index, stats["mean"], color=color, label=label, **line)
    if (stats["seeds"] > 1).any():
        low = stats["mean"] - stats["sd"]
        if log:
            low = np.maximum(low, stats["low"])
        ax.fill_between(stats.index, low, stats["mean"] + stats["sd"], color=color, alpha=0.2, lw=0)
    return stats


def grid_axes(figure: Figure, panels: int, rows_per_panel: int = 1, columns: int = 3):
    """Axes for `panels` panels, `columns` per row, each `rows_per_panel` axes tall."""
    columns = max(1, min(columns, panels))
    groups = math.ceil(panels / columns)
    axes = figure.subplots(groups * rows_per_panel, columns, squeeze=False)
    chosen = []
    for i in range(panels):
        g, c = divmod(i, columns)
        chosen.append([axes[g * rows_per_panel + r][c] for r in range(rows_per_panel)])
    for i in range(panels, groups * columns):
        g, c = divmod(i, columns)
        for r in range(rows_per_panel):
            axes[g * rows_per_panel + r][c].set_visible(False)
    return chosen


def note_in(ax, text: str) -> None:
    """An empty panel that says why, instead of a blank."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=9,
            color="0.3")


def matching(runs: pd.DataFrame, key: dict) -> pd.DataFrame:
    """The runs whose columns equal `key`, NaN matching NaN."""
    mask = pd.Series(True, index=runs.index)
    for column, value in key.items():
        mask &= runs[column].isna() if _missing(value) else (runs[column] == value)
    return runs[mask]


def group_runs(runs: pd.DataFrame, row) -> pd.DataFrame:
    """The runs of one (experiment, problem, optimizer, setting) group."""
    return matching(runs, {column: row[column] for column in group_columns(runs)})


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def lr_text(lr: float) -> str:
    """3 significant digits: 0.129, 7.74e-5."""
    return f"{lr:.3g}".replace("e-0", "e-").replace("e+0", "e")


def score_axis(ax, metric: str) -> None:
    if metric.endswith("accuracy"):
        ax.set_ylabel("final validation accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    else:
        ax.set_yscale("log")
        ax.set_ylabel("final validation loss (log scale)")


# ---- 1. optimizer loss curves -----------------------------------------------------------------

def optimizer_curves(frame: pd.DataFrame) -> Drawn | None:
    """Train and validation loss per step, each optimizer at its own best lr; one panel per problem."""
    runs = run_table(frame)
    main = main_configs(runs)
    sources = panel_sources(main)
    if not sources:
        return None
    colors = optimizer_colors(runs["optimizer"])
    used = []
    with style():
        figure = new_figure(5.0 * min(len(sources), 3), 6.6 * math.ceil(len(sources) / 3))
        for (problem, experiment), (train_ax, val_ax) in zip(sources.items(), grid_axes(figure, len(sources), 2)):
            rows = main[(main["problem"] == problem) & (main["experiment"] == experiment)]
            members = runs[runs["run_id"].isin([r for ids in rows["run_ids"] for r in ids])]
            window = smoothing_window(members["last_step"].max())
            for _, row in rows.iterrows():
                curve = points(frame, row["run_ids"], ["train_loss", "val_loss"])
                label = f"{row['optimizer']}  lr {lr_text(row['lr'])}  ({row['seeds']} seed{'s' * (row['seeds'] > 1)})"
                color = colors[row["optimizer"]]
                mean_band(train_ax, curve[curve["metric"] == "train_loss"], color=color, label=label, smooth=window,
                          log=True, lw=1.4)
                mean_band(val_ax, curve[curve["metric"] == "val_loss"], color=color, label=label, log=True,
                          lw=1.4, marker="o", ms=3)
                used += row["run_ids"]
            loss = loss_label(members)
            train_ax.set_title(f"{problem} ({experiment}): training loss")
            smoothed = f"\nper minibatch, mean of {window} steps" if window > 1 else ""
            train_ax.set_ylabel(f"train loss, {loss} (log){smoothed}")
            val_ax.set_title(f"{problem}: validation loss")
            val_ax.set_ylabel(f"validation loss, {loss} (log)")
            for ax in (train_ax, val_ax):
                ax.set_yscale("log")
                ax.set_xlabel("step (optimizer updates)")
            train_ax.legend(fontsize=8, title="optimizer at its best lr", title_fontsize=8)
    caption = ("Training loss (top, per minibatch, smoothed) and validation loss (bottom) against the step for each "
               "optimizer at its own best learning rate (best mean final validation accuracy for classifiers, "
               "validation loss otherwise); lines are means over seeds, bands ±1 sd.")
    return Drawn(figure, caption, used)


# ---- 2. learning-rate sensitivity ---------------------------------------------------------

def lr_sensitivity(frame: pd.DataFrame) -> Drawn | None:
    """Final validation metric against lr, one line per optimizer; diverged runs marked, not dropped."""
    runs = run_table(frame)
    main = main_configs(runs)
    sources = panel_sources(main, need_lrs=2)
    if not sources:
        return None
    colors = optimizer_colors(runs["optimizer"])
    used, any_diverged = [], False
    with style():
        figure = new_figure(6.8 * min(len(sources), 2), 4.3 * math.ceil(len(sources) / 2))
        for (problem, experiment), (ax,) in zip(sources.items(), grid_axes(figure, len(sources), columns=2)):
            rows = main[(main["problem"] == problem) & (main["experiment"] == experiment)]
            metric = rows["score_metric"].iloc[0]
            higher_better = metric.endswith("accuracy")
            panel_diverged = False
            for stagger, (_, row) in enumerate(rows.iterrows()):
                members = group_runs(runs, row)
                members = members[members["badness"].notna()]
                used += list(members["run_id"])
                color = colors[row["optimizer"]]
                ok = members[~members["diverged"]]
                stats = ok.groupby("lr")["score"].agg(["mean", "std", "count"])
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
    caption = ("Final validation metric against the learning rate (log scale), one line per optimizer: means over "
               "seeds with ±1 sd bands, a star at each optimizer's best lr"
               + ("; runs that diverged are drawn as × at the worst edge of the panel instead of being dropped."
                  if any_diverged else "; no run diverged."))
    return Drawn(figure, caption, used)


# ---- 3. the learning rate matters -------------------------------------------------------------

def lr_matters(frame: pd.DataFrame) -> Drawn | None:
    """One optimizer at a too small, the best and a too large lr: crawling, converging, diverging."""
    runs = run_table(frame)
    main = main_configs(runs)
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
    curve = points(frame, used, ["train_loss", "val_loss"])
    title = f"{row['optimizer']} on {row['problem']} ({row['experiment']})"
    loss = loss_label(members)
    finals = {}
    with style():
        figure = new_figure(15 if zoom else 12, 4.6)
        axes = figure.subplots(1, 3 if zoom else 2)
        train_ax, val_ax = axes[0], axes[-1]
        for name, at_lr in shown_runs.items():
            label = f"{name}: lr {lr_text(shown[name])} ({len(at_lr)} run{'s' * (len(at_lr) > 1)})"
            mine = curve[curve["run_id"].isin(at_lr["run_id"])]
            train = mine[mine["metric"] == "train_loss"]
            finals[name] = _ends(mean_band(train_ax, train, color=colors[name], label=label, log=True, lw=1.3))[1]
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
    return Drawn(figure, caption, used)


# ---- 4. gradient norms -----------------------------------------------------------------------

def gradient_norms(frame: pd.DataFrame) -> Drawn | None:
    """Global gradient norm per step for each optimizer at its best lr; one panel per problem."""
    runs = run_table(frame)
    main = main_configs(runs)
    sources = panel_sources(main)
    if not sources:
        return None
    colors = optimizer_colors(runs["optimizer"])
    used = []
    with style():
        figure = new_figure(5.0 * min(len(sources), 3), 3.9 * math.ceil(len(sources) / 3))
        for (problem, experiment), (ax,) in zip(sources.items(), grid_axes(figure, len(sources))):
            rows = main[(main["problem"] == problem) & (main["experiment"] == experiment)]
            window = 1
            for _, row in rows.iterrows():
                curve = points(frame, row["run_ids"], "grad_norm")
                window = smoothing_window(curve["step"].max() if len(curve) else 1)
                mean_band(ax, curve, color=colors[row["optimizer"]], smooth=window, log=True, lw=1.3,
                          label=f"{row['optimizer']}  lr {lr_text(row['lr'])}")
                used += row["run_ids"]
            ax.set_yscale("log")
            ax.set_xlabel("step (optimizer updates)")
            ax.set_ylabel("gradient norm ‖g‖₂ (log)" + (f"\nmean of {window} steps" if window > 1 else ""))
            ax.set_title(f"{problem} ({experiment})")
            ax.legend(fontsize=8)
    caption = ("The global L2 norm of the gradient at each step (log scale), each optimizer at its best lr, means over "
               "seeds with ±1 sd bands: how the slope the optimizer sees shrinks (or not) as training goes on.")
    return Drawn(figure, caption, used)


# ---- 5. zero_grad and gradient accumulation -----------------------------------------------------

MATCH = ("problem", "optimizer", "lr", "batch_size", "steps", "epochs", "loss", "device")


def _ends(stats: pd.DataFrame) -> tuple:
    """(first, last) of a seed-mean curve."""
    values = stats["mean"].dropna() if len(stats) else pd.Series(dtype=float)
    return (float(values.iloc[0]), float(values.iloc[-1])) if len(values) else (math.nan, math.nan)


def _zero_grad_pairs(runs):
    """(runs without zero_grad, the same configs with it) for the most common such config."""
    if "zero_grad" not in runs:
        return None
    without = runs[runs["zero_grad"].eq(False) & (runs["last_step"] > 0)]
    if without.empty:
        return None
    keys = list(MATCH) + ["accumulate"]
    counts = without.groupby(keys, dropna=False).size().sort_values(ascending=False, kind="stable")
    key = dict(zip(keys, counts.index[0]))
    with_ = runs[runs["zero_grad"].eq(True) & (runs["last_step"] > 0)]
    return key, matching(without, key), matching(with_, key)


def _accumulation_pairs(runs):
    """(runs with accumulate=K at batch B, runs with one batch of K*B, same seed), the largest such set."""
    plain = runs[runs["zero_grad"].ne(False) & (runs["last_step"] > 0)]
    accumulated = plain[plain["accumulate"] > 1]
    if accumulated.empty:
        return None
    big = plain[plain["accumulate"] == 1]
    keys = ["problem", "optimizer", "lr", "seed", "steps", "epochs", "device"]
    left = accumulated.assign(examples=accumulated["batch_size"] * accumulated["accumulate"])
    pairs = left.merge(big.rename(columns={"batch_size": "examples"}), on=[*keys, "examples"],
                       suffixes=("", "_big"))
    if pairs.empty:
        return None
    chosen = pairs.groupby(["problem", "optimizer", "lr", "accumulate", "batch_size"]).size().idxmax()
    pairs = pairs.set_index(["problem", "optimizer", "lr", "accumulate", "batch_size"]).loc[[chosen]].reset_index()
    return chosen, pairs


def zero_grad_and_accumulation(frame: pd.DataFrame) -> Drawn | None:
    """Loss and gradient norm with and without zero_grad(); K accumulated micro-batches vs one K-times batch."""
    runs = run_table(frame)
    zero = _zero_grad_pairs(runs)
    accumulation = _accumulation_pairs(runs)
    if zero is None and accumulation is None:
        return None
    used, notes, parts = [], [], []
    with style():
        figure = new_figure(15, 4.4)
        loss_ax, norm_ax, acc_ax = figure.subplots(1, 3)
        if zero is not None:
            key, without, with_ = zero
            ends = {}  # forgotten? -> ((first, last) train loss, (first, last) gradient norm)
            title = f"{key['problem']}, {key['optimizer']} lr {lr_text(key['lr'])}, batch {int(key['batch_size'])}"
            for group, forgotten, color, label in ((with_, False, GOOD, "zero_grad() every step"),
                                                   (without, True, LARGE, "zero_grad() forgotten: gradients add up")):
                if group.empty:
                    continue
                used += list(group["run_id"])
                curve = points(frame, group["run_id"], ["train_loss", "grad_norm"])
                window = smoothing_window(group["last_step"].max())
                label = f"{label} ({group['seed'].nunique()} seeds)"
                loss_stats = mean_band(loss_ax, curve[curve["metric"] == "train_loss"], color=color, label=label,
                                       smooth=window, log=True, lw=1.3)
                norm_stats = mean_band(norm_ax, curve[curve["metric"] == "grad_norm"], color=color, label=label,
                                       smooth=window, log=True, lw=1.3)
                ends[forgotten] = (_ends(loss_stats), _ends(norm_stats))
                for _, run in group[group["diverged"]].iterrows():
                    for ax in (loss_ax, norm_ax):
                        ax.plot([run["last_step"]], [0.96], "x", color=color, ms=9, mew=2,
                                transform=ax.get_xaxis_transform(), clip_on=False)
            if with_.empty:
                notes.append("no run of the same config with zero_grad on, to compare with")
            loss_ax.set_title(f"zero_grad: training loss\n{title}")
            norm_ax.set_title("zero_grad: gradient norm")
            loss_ax.set_ylabel(f"train loss, {loss_label(without)} (log)")
            norm_ax.set_ylabel("gradient norm ‖g‖₂ used by the step (log)")
            for ax in (loss_ax, norm_ax):
                ax.set_yscale("log")
                ax.set_xlabel("step (optimizer updates)")
                ax.legend(fontsize=8)
            (_, loss_end), (norm_start, norm_end) = ends.get(True, ((math.nan,) * 2, (math.nan,) * 2))
            sentence = (f"without zero_grad() every step's gradient is added to the last, so the gradient norm goes "
                        f"from {norm_start:.3g} to {norm_end:.3g} and the training loss ends at {loss_end:.3g}")
            if False in ends:
                sentence += (f", against a gradient norm of {ends[False][1][1]:.3g} and a loss of "
                             f"{ends[False][0][1]:.3g} with it")
            parts.append(sentence)
        else:
            for ax in (loss_ax, norm_ax):
                note_in(ax, "No run with zero_grad = false yet:\nrun `optimstudy sweep experiments/zero_grad.toml`")
            notes.append("the zero_grad panels need runs with zero_grad = false (experiments/zero_grad.toml)")
        if accumulation is not None:
            (problem, optimizer, lr, k, batch), pairs = accumulation
            seed = int(pairs["seed"].min())
            pair = pairs[pairs["seed"] == seed].iloc[0]
            used += [pair["run_id"], pair["run_id_big"]]
            curve = points(frame, [pair["run_id"], pair["run_id_big"]], "train_loss")
            big = curve[curve["run_id"] == pair["run_id_big"]].set_index("step")["value"]
            small = curve[curve["run_id"] == pair["run_id"]].set_index("step")["value"]
            acc_ax.plot(big.index, big, color="0.25", lw=3.5, alpha=0.55, label=f"one batch of {int(batch * k)}")
            acc_ax.plot(small.index, small, color=LARGE, lw=1.1, ls="--",
                        label=f"accumulate={int(k)} × batch {int(batch)}")
            both = pd.concat([big, small], axis=1, join="inner").dropna()
            gap = float((both.iloc[:, 0] - both.iloc[:, 1]).abs().max()) if len(both) else math.nan
            acc_ax.set_yscale("log")
            acc_ax.set_title(f"gradient accumulation\n{problem}, {optimizer} lr {lr_text(lr)}, seed {seed}")
            acc_ax.set_xlabel("step (optimizer updates)")
            acc_ax.set_ylabel("train loss per step (log)")
            acc_ax.text(0.02, 0.03, f"largest |difference| over {len(both)} steps: {gap:.1e}",
                        transform=acc_ax.transAxes, fontsize=8)
            acc_ax.legend(fontsize=8)
            parts.append(f"accumulating {int(k)} micro-batches of {int(batch)} follows the curve of one batch of "
                         f"{int(batch * k)} (largest difference {gap:.1e})")
        else:
            note_in(acc_ax, "No accumulate = K run with a batch-K×B twin yet:\n"
                            "run `optimstudy sweep experiments/zero_grad.toml`")
            notes.append("the accumulation panel needs accumulate = K runs and batch K×B runs with the same seed "
                         "(experiments/zero_grad.toml)")
    caption = "Left two panels: " + "; right: ".join(parts) + "." if parts else ""
    if zero is None:
        caption = "Right: " + parts[0] + "."
    return Drawn(figure, caption, used, note="; ".join(notes))


# ---- 6. loss functions -----------------------------------------------------------------------

def _loss_runs(runs):
    """Runs of one regression problem with a known optimum trained under several losses."""
    optimum = [p for p, problem in PROBLEMS.items() if problem.has_optimum]
    candidates = runs[runs["problem"].isin(optimum) & (runs["last_step"] > 0) & runs["zero_grad"].ne(False)
                      & (runs["accumulate"].fillna(1) == 1)]
    best, best_count = None, 1
    for key, members in candidates.groupby(["experiment", "problem"]):
        if members["loss"].nunique() > best_count:
            best, best_count = members, members["loss"].nunique()
    return best


def loss_functions(frame: pd.DataFrame) -> Drawn:
    """The lesson's numbers (mean error vs MSE, cross-entropy vs p) and what training on each loss does."""
    from optimstudy.losses import LESSON_PAIRS, lesson_numbers

    numbers = lesson_numbers()
    runs = run_table(frame)
    members = _loss_runs(runs)
    used, note = [], ""
    with style():
        figure = new_figure(13, 8.6)
        (pairs_ax, ce_ax), (curve_ax, final_ax) = figure.subplots(2, 2)
        # (a) the lesson's two predictions: errors +2 and -2
        names = ["mean error", "MAE", "MSE"]
        values = [numbers["mean_error"], numbers["mae"], numbers["mse"]]
        bars = pairs_ax.bar(names, values, color=[LOSS_COLORS["mean_error"], LOSS_COLORS["mae"], LOSS_COLORS["mse"]])
        pairs_ax.bar_label(bars, fmt="%.1f")
        text = ", ".join(f"predict {p:g} for {t:g} (error {p - t:+g})" for p, t in LESSON_PAIRS)
        pairs_ax.set_title("the lesson's two predictions:\n" + text, fontsize=9)
        pairs_ax.set_ylabel("loss over the two predictions")
        pairs_ax.text(0, max(values) * 0.55, "+2 and −2 cancel:\nmean error says 0,\na 'perfect' model",
                      ha="center", fontsize=8, color=LARGE)
        pairs_ax.set_ylim(min(0, min(values)) - 0.3, max(values) * 1.25)
        # (b) cross-entropy against the probability given to the true class
        p = np.linspace(0.005, 1, 400)
        ce_ax.plot(p, -np.log(p), color="0.2", lw=1.8, label="cross-entropy = −ln p")
        cases = [(0.05, "95% sure of the wrong class", LARGE), (0.45, "55% sure of the wrong class", "#dd8452"),
                 (0.55, "55% sure, right", SMALL), (0.95, "95% sure, right", GOOD)]
        for prob, label, color in cases:
            ce_ax.plot([prob], [-math.log(prob)], "o", color=color, ms=8, label=f"{label}: p={prob:g}, "
                       f"loss {-math.log(prob):.2f}")
        ce_ax.set_xlabel("probability the model gives the true class, p")
        ce_ax.set_ylabel("cross-entropy (nats)")
        ce_ax.set_title("cross-entropy punishes confident wrong answers most")
        ce_ax.set_ylim(0, 5.5)
        ce_ax.legend(fontsize=8)
        if members is None:
            for ax in (curve_ax, final_ax):
                note_in(ax, "No runs of one problem under several losses yet:\n"
                            "run `optimstudy sweep experiments/loss_functions.toml`")
            note = "the bottom panels need runs with loss = mean_error, mse, ... (experiments/loss_functions.toml)"
        else:
            outcome = _loss_training(frame, members, curve_ax, final_ax)
            used = list(members["run_id"])
    caption = ("Top: the lesson's numbers, computed by the training code's own loss functions: mean error scores "
               f"the two misses (+2, −2) {numbers['mean_error']:g}, a perfect model, while MSE charges "
               f"{numbers['mse']:g}; "
               f"cross-entropy (−ln p) charges {numbers['cross_entropy_95_sure_wrong']:.2f} for a 95%-sure wrong "
               f"answer but {numbers['cross_entropy_55_sure_wrong']:.2f} for a 55%-sure one.")
    if members is not None:
        caption += (" Bottom: the loss each run minimised, per step, and how far each ends from the least-squares "
                    f"optimum in MSE ({outcome}).")
    return Drawn(figure, caption, used, note=note)


def _loss_training(frame, members, curve_ax, final_ax):
    losses = sorted(members["loss"].unique(), key=lambda n: (n != "mse", n))
    extra = iter(sns.color_palette("Dark2", 8))
    palette = {name: LOSS_COLORS.get(name) or next(extra) for name in losses}
    problem = members["problem"].iloc[0]
    mse_runs = members[members["loss"] == "mse"]
    # one lr for the curves: the lr that gives MSE its lowest mean excess, if every loss tried it
    excess = members.assign(excess=members["final_excess_loss"].where(~members["diverged"], np.inf).fillna(np.inf))
    common = set.intersection(*(set(g["lr"]) for _, g in members.groupby("loss")))
    ranked = (mse_runs if not mse_runs.empty else excess).assign(excess=excess["excess"]).groupby("lr")["excess"].mean()
    ranked = ranked[ranked.index.isin(common)] if common else ranked
    lr = ranked.idxmin() if len(ranked) else members["lr"].min()
    for name in losses:
        at = members[(members["loss"] == name) & np.isclose(members["lr"], lr)]
        if at.empty:
            continue
        curve = points(frame, at["run_id"], "train_loss")
        stats = seed_mean(curve, smoothing_window(at["last_step"].max()))
        curve_ax.plot(stats.index, stats["mean"], color=palette[name], lw=1.5,
                      label=f"{LOSS_NAMES.get(name, name)} ({len(at)} runs)")
        for _, run in at[at["diverged"]].iterrows():
            curve_ax.plot([run["last_step"]], [0.04 if name == "mean_error" else 0.96], "x", color=palette[name],
                          ms=9, mew=2, transform=curve_ax.get_xaxis_transform(), clip_on=False)
    curve_ax.set_yscale("symlog", linthresh=1e-2)
    curve_ax.axhline(0, color="0.5", lw=0.8)
    curve_ax.set_xlabel("step (optimizer updates)")
    curve_ax.set_ylabel("the training loss each run minimises\n(its own measure, symlog scale)")
    curve_ax.set_title(f"what the optimizer sees: {problem}, lr {lr_text(lr)}")
    curve_ax.legend(fontsize=8)
    # what each loss leaves you with, in one common measure
    for name in losses:
        of = excess[excess["loss"] == name]
        ok = of[np.isfinite(of["excess"])]
        stats = ok.groupby("lr")["excess"].agg(["mean", "std"])
        final_ax.plot(stats.index, stats["mean"], "o-", color=palette[name], ms=4, label=LOSS_NAMES.get(name, name))
        bad = of[~np.isfinite(of["excess"])]
        if not bad.empty:
            final_ax.plot(bad["lr"], [WORST_EDGE] * len(bad), "x", color=palette[name], ms=9, mew=2,
                          transform=final_ax.get_xaxis_transform(), clip_on=False)
    final_ax.set_xscale("log")
    final_ax.set_yscale("log")
    final_ax.set_xlabel("learning rate (log scale)")
    final_ax.set_ylabel("final train MSE above the least-squares optimum (log)")
    final_ax.set_title("what you get: excess MSE after training on each loss")
    handles, labels = final_ax.get_legend_handles_labels()
    if not np.isfinite(excess["excess"]).all():
        handles.append(Line2D([], [], ls="", marker="x", color="0.3", ms=8, mew=2))
        labels.append("diverged / no finite MSE (top edge)")
    final_ax.legend(handles, labels, fontsize=8)
    best = excess.groupby(["loss", "lr"])["excess"].mean().groupby("loss").min()
    return "lowest mean excess MSE over the lrs tried: " + ", ".join(
        f"{LOSS_NAMES.get(name, name)} {best[name]:.2g}" for name in losses)


# ---- 7. the valley ---------------------------------------------------------------------------

def _descend_1d(lr: float, steps: int = 12, start: float = -2.0, optimum: float = 1.0):
    """Gradient descent on f(w) = (w - optimum)^2: w <- w - lr * 2 (w - optimum)."""
    path = [start]
    for _ in range(steps):
        path.append(path[-1] - lr * 2 * (path[-1] - optimum))
    return np.array(path)


def valley(frame: pd.DataFrame) -> Drawn:
    """Loss against one weight with gradient-descent steps; the 2-weight valley with optimizer trajectories."""
    from optimstudy.data import load_problem_data

    runs = run_table(frame)
    valley_runs = runs[(runs["problem"] == "valley") & (runs["last_step"] > 0)]
    split_seed = int(valley_runs["split_seed"].dropna().iloc[0]) if valley_runs["split_seed"].notna().any() else 0
    val_fraction = float(valley_runs["val_fraction"].dropna().iloc[0]) if valley_runs["val_fraction"].notna().any() \
        else 0.0625
    data = load_problem_data("valley", split_seed=split_seed, val_fraction=val_fraction, device="cpu")
    x, y = data.train.x.double().numpy(), data.train.y.double().numpy()
    a, b, c = x.T @ x / len(y), x.T @ y / len(y), float(y @ y / len(y))
    optimum = np.linalg.solve(a, b)
    used, note = [], ""
    with style():
        figure = new_figure(14, 7.4)
        grid = figure.add_gridspec(3, 2, width_ratios=[1, 2.1])
        for i, (lr, verdict, color) in enumerate(((0.1, "too small: creeps", SMALL), (0.4, "good: a few steps", GOOD),
                                                  (1.05, "too large: overshoots, grows", LARGE))):
            ax = figure.add_subplot(grid[i, 0])
            path = _descend_1d(lr, steps=8)
            reach = max(3.6, float(np.abs(path - 1).max()) * 1.08)
            w = np.linspace(1 - reach, 1 + reach, 300)
            ax.plot(w, (w - 1) ** 2, color="0.6", lw=1.2)
            ax.plot(path, (path - 1) ** 2, "o-", color=color, ms=4, lw=1)
            ax.plot(path[:1], (path[:1] - 1) ** 2, "o", color="k", ms=5)
            ax.set_xlim(w[0], w[-1])
            ax.set_ylim(-0.05 * reach ** 2, reach ** 2 * 1.05)
            ax.set_title(f"lr {lr:g}: {verdict}", fontsize=9)
            ax.set_ylabel("loss (w−1)²")
            if i == 2:
                ax.set_xlabel("weight w (gradient descent from w = −2, 8 steps)")
        ax = figure.add_subplot(grid[:, 1])
        trajectories = _trajectories(frame, valley_runs)
        starts = np.array([VALLEY_START, optimum])
        every = np.concatenate([starts] + [t[["w1", "w2"]].to_numpy() for _, t, _ in trajectories])
        every = every[np.isfinite(every).all(axis=1)]
        low = np.maximum(every.min(axis=0) - 0.4, [-8, -8])  # a diverged path may leave; the plot stays put
        high = np.minimum(every.max(axis=0) + 0.4, [8, 8])
        g1, g2 = np.meshgrid(np.linspace(low[0], high[0], 240), np.linspace(low[1], high[1], 240))
        loss = (a[0, 0] * g1 ** 2 + 2 * a[0, 1] * g1 * g2 + a[1, 1] * g2 ** 2 - 2 * (b[0] * g1 + b[1] * g2) + c)
        floor = loss.min()
        levels = floor + np.geomspace(0.003, max(loss.max() - floor, 0.01), 18)
        filled = ax.contourf(g1, g2, loss, levels=np.concatenate([[floor - 1e-9], levels]), cmap="Blues",
                             alpha=0.75)
        ax.contour(g1, g2, loss, levels=levels, colors="0.35", linewidths=0.35)
        figure.colorbar(filled, ax=ax, label="training loss, MSE (contours log-spaced)", format="%.2g")
        colors = optimizer_colors(runs["optimizer"])
        for label, trajectory, run in trajectories:
            used.append(run["run_id"])
            path = np.vstack([VALLEY_START, trajectory[["w1", "w2"]].to_numpy()])
            color = colors[run["optimizer"]]
            ax.plot(path[:, 0], path[:, 1], "-", color=color, lw=1.8, label=label)
            mark = max(1, len(path) // 40)
            ax.plot(path[::mark, 0], path[::mark, 1], "o", color=color, ms=2.5)
        ax.plot(*VALLEY_START, "o", color="k", ms=8, label=f"start {VALLEY_START}")
        ax.plot(*optimum, "*", color="gold", mec="k", ms=16, label=f"least-squares optimum ({optimum[0]:.2f}, "
                f"{optimum[1]:.2f})")
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_xlabel("weight w1 (steep direction)")
        ax.set_ylabel("weight w2 (shallow direction)")
        ax.set_title("the valley problem: training loss over its two weights, with each optimizer's path")
        if not trajectories:
            ax.text(0.5, 0.06, "No valley runs yet: run `optimstudy sweep experiments/landscape.toml`",
                    transform=ax.transAxes, ha="center", fontsize=9, bbox={"fc": "white", "ec": "0.6"})
            note = "the valley panel has no trajectories yet: run `optimstudy sweep experiments/landscape.toml`"
        ax.legend(fontsize=8, loc="lower left")
    caption = ("Left: gradient descent on one weight, f(w) = (w−1)², with a too small, a good and a too large lr. "
               "Right: the valley problem's training loss over its two weights (curvatures 25:1), regenerated from "
               "its data")
    caption += (", with the path (w1, w2 after every step, dots every few steps) each optimizer took from (−2, 4) "
                "at its best lr." if trajectories else ".")
    return Drawn(figure, caption, used, note=note)


def _trajectories(frame, valley_runs):
    """Per optimizer: (label, w1/w2 per step, run) of its best lr's first seed."""
    if valley_runs.empty:
        return []
    chosen = []
    best = best_configs(valley_runs)
    for _, row in best.sort_values("trials", ascending=False).drop_duplicates("optimizer").iterrows():
        members = group_runs(valley_runs, row)
        at = members[np.isclose(members["lr"], row["lr"])] if pd.notna(row["lr"]) else members
        if at.empty:
            continue
        run = at.sort_values("seed").iloc[0]
        weights = points(frame, [run["run_id"]], ["w1", "w2"]).pivot_table(index="step", columns="metric",
                                                                           values="value")
        if not {"w1", "w2"} <= set(weights.columns):
            continue
        label = f"{run['optimizer']} lr {lr_text(run['lr'])} ({int(run['last_step'])} steps)"
        chosen.append((label, weights.sort_index(), run))
    order = {name: i for i, name in enumerate(OPTIMIZERS)}
    return sorted(chosen, key=lambda item: order.get(item[2]["optimizer"], 99))


# ---- 8. devices ------------------------------------------------------------------------------

def _device_label(row) -> str:
    name = str(row.get("device_name") or "")
    name = name if len(name) <= 34 else name[:32] + "…"
    return f"{row['device']}: {name}" if name else str(row["device"])


def devices(frame: pd.DataFrame) -> Drawn | None:
    """Throughput per device and batch size; loss curves of the same seed on each device."""
    runs = run_table(frame)
    timed = runs[runs["samples_per_s"].notna() & (runs["samples_per_s"] > 0) & (runs["last_step"] > 0)
                 & (runs["accumulate"].fillna(1) == 1) & runs["zero_grad"].ne(False)]
    if timed.empty:
        return None
    timed = timed.assign(device_label=[_device_label(r) for _, r in timed.iterrows()],
                         batch=timed["batch_size"].map(lambda b: f"{b:g}"))
    combos = {key: (len(g[["device_label", "batch_size"]].drop_duplicates()), len(g))
              for key, g in timed.groupby(["experiment", "problem"])}
    experiment, problem = max(combos, key=combos.get)  # the sweep that varied devices and batch sizes most
    shown = timed[(timed["experiment"] == experiment) & (timed["problem"] == problem)].sort_values("batch_size")
    labels = sorted(shown["device_label"].unique(), key=lambda s: (not s.startswith("cpu"), s))
    used = list(shown["run_id"])
    pair = _same_seed_on_devices(timed)
    with style():
        figure = new_figure(15 if pair else 11, 4.6)
        axes = figure.subplots(1, 3 if pair else 2, width_ratios=None if pair else [1.3, 1])
        speed_ax = axes[0]
        sns.pointplot(data=shown, x="batch", y="samples_per_s", hue="device_label", hue_order=labels,
                      errorbar="sd", ax=speed_ax, palette="Set2", markers="o", capsize=0.1)
        speed_ax.set_yscale("log")
        speed_ax.set_xlabel("batch size (examples per step)")
        speed_ax.set_ylabel("throughput, training examples per second (log)")
        speed_ax.set_title(f"throughput on {problem} ({experiment})\n{len(shown)} runs, mean ± sd")
        speed_ax.legend(title="device", fontsize=8, title_fontsize=8)
        if pair is None:
            only = ", ".join(sorted(timed["device_label"].unique()))
            note_in(axes[1], f"Only one device was used:\n{only}.\n\nNo loss curves to compare across devices\n"
                             "yet: run `optimstudy sweep experiments/devices.toml`\n"
                             "on a machine with a GPU (cuda or mps).")
            caption = (f"Training throughput (examples per second) per batch size on {problem}; only one device ("
                       f"{only}) appears in the store, so there is no cross-device comparison of loss curves yet.")
            note = "only one device was used: run experiments/devices.toml on a machine with a GPU to compare"
        else:
            curve_ax, gap_ax = axes[1], axes[2]
            key, members = pair
            used += list(members["run_id"])
            curve = points(frame, members["run_id"], "train_loss")
            members = members.sort_values("device", key=lambda d: d != "cpu")
            reference, worst = None, 0.0
            for i, (_, run) in enumerate(members.iterrows()):
                values = curve[curve["run_id"] == run["run_id"]].set_index("step")["value"]
                curve_ax.plot(values.index, values, lw=3 if i == 0 else 1.2, ls="-" if i == 0 else "--",
                              alpha=0.6 if i == 0 else 1, label=_device_label(run))
                if reference is None:
                    reference = values
                else:
                    gap = (values - reference).abs().dropna()
                    worst = max(worst, float(gap.max()) if len(gap) else 0.0)
                    gap_ax.plot(gap.index, gap.clip(lower=1e-12), lw=1,
                                label=f"|{run['device']} − {members['device'].iloc[0]}|")
            curve_ax.set_yscale("log")
            curve_ax.set_xlabel("step (optimizer updates)")
            curve_ax.set_ylabel("train loss per step (log)")
            curve_ax.set_title(f"the same seed on each device\n{key['problem']}, {key['optimizer']} "
                               f"lr {lr_text(key['lr'])}, seed {int(key['seed'])}")
            curve_ax.legend(fontsize=8)
            gap_ax.set_yscale("log")
            gap_ax.set_xlabel("step (optimizer updates)")
            gap_ax.set_ylabel("|loss difference| between devices (log)")
            gap_ax.set_title("how far the devices' curves drift apart")
            gap_ax.legend(fontsize=8)
            caption = (f"Training throughput per device and batch size on {problem} ({experiment}), and one "
                       f"configuration trained with the same seed on each device, whose training losses differ by at "
                       f"most {worst:.2g} over {len(reference)} steps.")
            note = ""
    return Drawn(figure, caption, used, note=note)


def _same_seed_on_devices(timed):
    keys = ["problem", "optimizer", "lr", "seed", "batch_size", "accumulate", "zero_grad", "steps", "epochs", "loss"]
    counts = timed.groupby(keys, dropna=False)["device"].nunique()
    counts = counts[counts > 1]
    if counts.empty:
        return None
    key = dict(zip(keys, counts.index[0]))
    return key, matching(timed, key).drop_duplicates("device")


FIGURES = {
    "optimizer_curves": (optimizer_curves, "Optimizers compared at their best learning rates",
                         "experiments/mnist_optimizers.toml"),
    "lr_sensitivity": (lr_sensitivity, "Learning-rate sensitivity", "experiments/lr_sensitivity.toml"),
    "lr_matters": (lr_matters, "The learning rate matters: too small, good, too large",
                   "experiments/lr_sensitivity.toml"),
    "gradient_norms": (gradient_norms, "Gradient norms during training", "experiments/mnist_optimizers.toml"),
    "zero_grad": (zero_grad_and_accumulation, "Forgetting zero_grad(), and gradient accumulation",
                  "experiments/zero_grad.toml"),
    "loss_functions": (loss_functions, "Loss functions: what the measure rewards", "experiments/loss_functions.toml"),
    "valley": (valley, "The loss landscape: steps down a valley", "experiments/landscape.toml"),
    "devices": (devices, "Devices: throughput and agreement", "experiments/devices.toml"),
}

