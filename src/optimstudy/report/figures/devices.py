"""Throughput per device and batch size; loss curves of the same seed on each device."""

import numpy as np

from optimstudy.report.plotting import Drawn, lr_text, matching, new_figure, note_in, palette, style

TITLE = "Devices: throughput and agreement"
SPEC = "experiments/devices.toml"
ORDER = 80
METRICS = ("train_loss",)  # per-step metrics it reads (the report loads only these)


def _device_label(row) -> str:
    name = str(row.get("device_name") or "")
    name = name if len(name) <= 34 else name[:32] + "…"
    return f"{row['device']}: {name}" if name else str(row["device"])


def _throughput(ax, shown, labels) -> None:
    """Mean ± sd throughput per batch size (as categories), one line per device (seaborn's pointplot)."""
    batches = list(dict.fromkeys(shown["batch"]))  # in batch-size order: `shown` is sorted by it
    for label, color in zip(labels, palette("Set2", len(labels))):
        stats = shown[shown["device_label"] == label].groupby("batch", sort=False)["samples_per_s"].agg(["mean", "std"])
        x = [batches.index(b) for b in stats.index]
        ax.plot(x, stats["mean"], color=color, marker="o", ms=9, lw=2.7, label=label)
        spread = stats["std"].notna().to_numpy()  # one run at a batch size: no bar, as seaborn draws it
        if spread.any():
            ax.errorbar(list(np.compress(spread, x)), stats["mean"][spread], yerr=stats["std"][spread], fmt="none",
                        ecolor=color, elinewidth=2.7, capsize=8, capthick=2.7)
    ax.set_xticks(range(len(batches)), batches)
    ax.set_xlim(-0.5, len(batches) - 0.5)
    ax.grid(False, axis="x")


def figure(study) -> Drawn | None:
    """Throughput per device and batch size; loss curves of the same seed on each device."""
    runs = study.runs
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
        fig = new_figure(15 if pair else 11, 4.6)
        axes = fig.subplots(1, 3 if pair else 2, width_ratios=None if pair else [1.3, 1])
        speed_ax = axes[0]
        _throughput(speed_ax, shown, labels)
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
            curve = study.points(members["run_id"], "train_loss")
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
            curve_ax.set_title(f"the same seed on each device\n{key['problem']}, {key['label']} "
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
    return Drawn(fig, caption, used, note=note)


def _same_seed_on_devices(timed):
    keys = ["problem", "label", "lr", "seed", "batch_size", "accumulate", "zero_grad", "steps", "epochs", "loss"]
    counts = timed.groupby(keys, dropna=False)["device"].nunique()
    counts = counts[counts > 1]
    if counts.empty:
        return None
    key = dict(zip(keys, counts.index[0]))
    return key, matching(timed, key).drop_duplicates("device")


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
