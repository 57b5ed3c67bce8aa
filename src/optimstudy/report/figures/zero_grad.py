"""Loss and gradient norm with and without zero_grad(); K accumulated micro-batches vs one K-times batch."""
import math

import pandas as pd

from optimstudy.report import plotting
from optimstudy.report.plotting import (
    GOOD,
    LARGE,
    Drawn,
    loss_label,
    lr_text,
    matching,
    mean_band,
    new_figure,
    note_in,
    smoothing_window,
    style,
)

TITLE = "Forgetting zero_grad(), and gradient accumulation"
SPEC = "experiments/zero_grad.toml"
ORDER = 50
METRICS = ("train_loss", "grad_norm")  # per-step metrics it reads (the report loads only these)


MATCH = ("problem", "label", "lr", "batch_size", "steps", "epochs", "loss", "device")


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
    keys = ["problem", "label", "lr", "seed", "steps", "epochs", "device"]
    left = accumulated.assign(examples=accumulated["batch_size"] * accumulated["accumulate"])
    pairs = left.merge(big.rename(columns={"batch_size": "examples"}), on=[*keys, "examples"],
                       suffixes=("", "_big"))
    if pairs.empty:
        return None
    chosen = pairs.groupby(["problem", "label", "lr", "accumulate", "batch_size"]).size().idxmax()
    pairs = pairs.set_index(["problem", "label", "lr", "accumulate", "batch_size"]).loc[[chosen]].reset_index()
    return chosen, pairs


def figure(study) -> Drawn | None:
    """Loss and gradient norm with and without zero_grad(); K accumulated micro-batches vs one K-times batch."""
    runs = study.runs
    zero = _zero_grad_pairs(runs)
    accumulation = _accumulation_pairs(runs)
    if zero is None and accumulation is None:
        return None
    used, notes, parts = [], [], []
    with style():
        fig = new_figure(15, 4.4)
        loss_ax, norm_ax, acc_ax = fig.subplots(1, 3)
        if zero is not None:
            key, without, with_ = zero
            ends = {}  # forgotten? -> ((first, last) train loss, (first, last) gradient norm)
            title = f"{key['problem']}, {key['label']} lr {lr_text(key['lr'])}, batch {int(key['batch_size'])}"
            for group, forgotten, color, label in ((with_, False, GOOD, "zero_grad() every step"),
                                                   (without, True, LARGE, "zero_grad() forgotten: gradients add up")):
                if group.empty:
                    continue
                used += list(group["run_id"])
                curve = study.points(group["run_id"], ["train_loss", "grad_norm"])
                window = smoothing_window(group["last_step"].max())
                label = f"{label} ({group['seed'].nunique()} seeds)"
                loss_stats = mean_band(loss_ax, curve[curve["metric"] == "train_loss"], color=color, label=label,
                                       smooth=window, log=True, lw=1.3)
                norm_stats = mean_band(norm_ax, curve[curve["metric"] == "grad_norm"], color=color, label=label,
                                       smooth=window, log=True, lw=1.3)
                ends[forgotten] = (plotting.ends(loss_stats), plotting.ends(norm_stats))
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
            curve = study.points([pair["run_id"], pair["run_id_big"]], "train_loss")
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
    return Drawn(fig, caption, used, note="; ".join(notes))


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
