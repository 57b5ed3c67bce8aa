"""Shared plot style for the analysis scripts (the built-in ones in optimstudy/report/figures/, a
user's in ./analysis/), and the script protocol.

An analysis script is a file with a title, the spec that fills it and one function of the study's
results (see analysis/README.md):

    from optimstudy.report import plotting

    TITLE = "Final validation metric per optimizer"
    SPEC = "experiments/quickstart.toml"    # the sweep that fills it
    ORDER = 50                               # place on the page (smaller first; default 100)
    METRICS = ("train_loss",)                # per-step metrics it reads (default: all; the report
                                             # loads the union, so leaving it out costs time, not results)

    def figure(study) -> plotting.Drawn | None:   # None: no runs for it in the store
        ...
        return plotting.Drawn(fig, "one sentence: what it shows", run_ids)

    if __name__ == "__main__":              # python NAME.py --tracking-uri ... --experiment ... --out DIR
        from optimstudy.cli import analysis_script_main

        raise SystemExit(analysis_script_main(figure))

Figures use matplotlib's object API (no pyplot state), in seaborn's whitegrid style, and are averaged with
pandas first: seaborn's bootstrap intervals on a million points would take minutes. Bands are
±1 standard deviation over seeds.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from optimstudy.facts import BUILTIN_OPTIMIZERS, BUILTIN_PROBLEMS  # registry order, without torch

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
    note: str = ""  # a part left empty, and the spec that would fill it (with no run_ids: left off the page)
    table: object = None  # a DataFrame shown under the figure on the page, if any


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


# seaborn 0.13's "whitegrid" style with its "notebook" context at font_scale 0.85, copied (less its
# image.cmap, a colormap only seaborn registers): importing seaborn costs the report time and memory
# (it imports scipy.stats; docs/performance.md); tests/report/test_report.py checks the copy
# against seaborn.
WHITEGRID = {
    "figure.facecolor": "white", "axes.labelcolor": ".15", "xtick.direction": "out", "ytick.direction": "out",
    "xtick.color": ".15", "ytick.color": ".15", "axes.axisbelow": True, "grid.linestyle": "-", "text.color": ".15",
    "font.family": ["sans-serif"],
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "lines.solid_capstyle": "round", "patch.edgecolor": "w", "patch.force_edgecolor": True, "xtick.top": False,
    "ytick.right": False, "axes.grid": True, "axes.facecolor": "white", "axes.edgecolor": ".8", "grid.color": ".8",
    "axes.spines.left": True, "axes.spines.bottom": True, "axes.spines.right": True, "axes.spines.top": True,
    "xtick.bottom": False, "ytick.left": False}
NOTEBOOK_085 = {
    "axes.linewidth": 1.25, "grid.linewidth": 1, "lines.linewidth": 1.5, "lines.markersize": 6, "patch.linewidth": 1,
    "xtick.major.width": 1.25, "ytick.major.width": 1.25, "xtick.minor.width": 1, "ytick.minor.width": 1,
    "xtick.major.size": 6, "ytick.major.size": 6, "xtick.minor.size": 4, "ytick.minor.size": 4, "font.size": 10.2,
    "axes.labelsize": 10.2, "axes.titlesize": 10.2, "xtick.labelsize": 9.35, "ytick.labelsize": 9.35,
    "legend.fontsize": 9.35, "legend.title_fontsize": 10.2}


def style():
    return rc_context({**WHITEGRID, **NOTEBOOK_085, "legend.framealpha": 0.85, "axes.titleweight": "bold"})


def palette(name: str, colors: int) -> list:
    """The first `colors` colours of a qualitative matplotlib colormap (tab10, Dark2, Set2), as RGB tuples:
    what seaborn.color_palette(name, colors) gives for them."""
    listed = colormaps[name].colors
    return [tuple(float(v) for v in listed[i % len(listed)]) for i in range(colors)]


def optimizer_colors(names) -> dict:
    """The same colour for an optimizer label in every figure: registry names first, in registry order."""
    palette_ = palette("tab10", 10) + palette("Dark2", 8)
    order = list(BUILTIN_OPTIMIZERS) + sorted(set(map(str, names)) - set(BUILTIN_OPTIMIZERS))
    return {name: palette_[i % len(palette_)] for i, name in enumerate(order)}


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


def ends(stats: pd.DataFrame) -> tuple:
    """(first, last) of a seed-mean curve."""
    values = stats["mean"].dropna() if len(stats) else pd.Series(dtype=float)
    return (float(values.iloc[0]), float(values.iloc[-1])) if len(values) else (math.nan, math.nan)


def panel_sources(main: pd.DataFrame, need_lrs: int = 1) -> dict:
    """problem -> the experiment that shows it best (most optimizers, then most trials)."""
    if main.empty:
        return {}
    usable = main[main["lrs"].map(len) >= need_lrs]
    chosen = {}
    for problem, rows in usable.groupby("problem", sort=False):
        scores = rows.groupby("experiment").agg(optimizers=("optimizer", "nunique"), trials=("trials", "sum"))
        chosen[problem] = scores.sort_values(["optimizers", "trials"], ascending=False).index[0]
    order = {name: i for i, name in enumerate(BUILTIN_PROBLEMS)}
    return dict(sorted(chosen.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
