"""The lesson's numbers (mean error vs MSE, cross-entropy vs p) and what training on each loss does."""
import math

import numpy as np
from matplotlib.lines import Line2D

from optimstudy.report import plotting
from optimstudy.report.plotting import (
    GOOD,
    LARGE,
    LOSS_COLORS,
    LOSS_NAMES,
    SMALL,
    WORST_EDGE,
    Drawn,
    lr_text,
    new_figure,
    note_in,
    seed_mean,
    smoothing_window,
    style,
)

TITLE = "Loss functions: what the measure rewards"
SPEC = "experiments/loss_functions.toml"
ORDER = 60
METRICS = ("train_loss",)  # per-step metrics it reads (the report loads only these)


# The lesson's pairs, as (prediction, target): errors +2 and -2 (optimstudy.problems.losses.LESSON_PAIRS).
LESSON_PAIRS = ((6.0, 4.0), (3.0, 5.0))


def lesson_numbers() -> dict:
    """The numbers optimstudy.problems.losses.lesson_numbers() computes with the training losses, here without
    torch (tests/report/test_report.py checks they agree)."""
    errors = np.array([prediction - target for prediction, target in LESSON_PAIRS])
    return {"mean_error": float(errors.mean()), "mse": float((errors ** 2).mean()), "mae": float(abs(errors).mean()),
            # ten classes; "95% sure it is a 7" when it is a 3 leaves 5% on the truth, 55% sure leaves 45%
            "cross_entropy_95_sure_wrong": -math.log(0.05), "cross_entropy_55_sure_wrong": -math.log(0.45)}


def _loss_runs(runs, facts):
    """Runs of one regression problem with a known optimum trained under several losses."""
    optimum = [p for p, found in facts.items() if found is not None and found.has_optimum]
    candidates = runs[runs["problem"].isin(optimum) & (runs["last_step"] > 0) & runs["zero_grad"].ne(False)
                      & (runs["accumulate"].fillna(1) == 1)]
    best, best_count = None, 1
    for _, members in candidates.groupby(["experiment", "problem"]):
        if members["loss"].nunique() > best_count:
            best, best_count = members, members["loss"].nunique()
    return best


def figure(study) -> Drawn | None:
    """The lesson's numbers (mean error vs MSE, cross-entropy vs p) and what training on each loss does."""
    numbers = lesson_numbers()
    runs = study.runs
    members = _loss_runs(runs, study.facts)
    used, note = [], ""
    with style():
        fig = new_figure(13, 8.6)
        (pairs_ax, ce_ax), (curve_ax, final_ax) = fig.subplots(2, 2)
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
            outcome = _loss_training(study, members, curve_ax, final_ax)
            used = list(members["run_id"])
    caption = ("Top: the lesson's numbers, as the training code's own loss functions give them: mean error scores "
               f"the two misses (+2, −2) {numbers['mean_error']:g}, a perfect model, while MSE charges "
               f"{numbers['mse']:g}; "
               f"cross-entropy (−ln p) charges {numbers['cross_entropy_95_sure_wrong']:.2f} for a 95%-sure wrong "
               f"answer but {numbers['cross_entropy_55_sure_wrong']:.2f} for a 55%-sure one.")
    if members is not None:
        caption += (" Bottom: the loss each run minimised, per step, and how far each ends from the least-squares "
                    f"optimum in MSE ({outcome}).")
    return Drawn(fig, caption, used, note=note)


def _loss_training(study, members, curve_ax, final_ax):
    losses = sorted(members["loss"].unique(), key=lambda n: (n != "mse", n))
    extra = iter(plotting.palette("Dark2", 8))
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
        curve = study.points(at["run_id"], "train_loss")
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


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
