"""Global gradient norm per step for each optimizer at its best lr; one panel per problem."""
import math

from optimstudy.report import plotting
from optimstudy.report.plotting import Drawn, grid_axes, lr_text, mean_band, new_figure, smoothing_window, style

TITLE = "Gradient norms during training"
SPEC = "experiments/mnist_optimizers.toml"
ORDER = 40
METRICS = ("grad_norm",)  # per-step metrics it reads (the report loads only these)


def figure(study) -> Drawn | None:
    """Global gradient norm per step for each optimizer at its best lr; one panel per problem."""
    runs = study.runs
    main = study.main
    sources = plotting.panel_sources(main)
    if not sources:
        return None
    colors = plotting.optimizer_colors(runs["label"])
    used = []
    with style():
        fig = new_figure(5.0 * min(len(sources), 3), 3.9 * math.ceil(len(sources) / 3))
        for (problem, experiment), (ax,) in zip(sources.items(), grid_axes(fig, len(sources))):
            rows = main[(main["problem"] == problem) & (main["experiment"] == experiment)]
            window = 1
            for _, row in rows.iterrows():
                curve = study.points(row["run_ids"], "grad_norm")
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
    return Drawn(fig, caption, used)


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
