"""Loss against one weight with gradient-descent steps; the 2-weight valley with optimizer trajectories."""
import json

import numpy as np
import pandas as pd

from optimstudy.facts import VALLEY_START, expected_valley_quadratic
from optimstudy.report import plotting
from optimstudy.report.plotting import GOOD, LARGE, SMALL, Drawn, lr_text, new_figure, style
from optimstudy.results import group_runs

TITLE = "The loss landscape: steps down a valley"
SPEC = "experiments/landscape.toml"
ORDER = 70
METRICS = ("w1", "w2")  # per-step metrics it reads (the report loads only these)


def _descend_1d(lr: float, steps: int = 12, start: float = -2.0, optimum: float = 1.0):
    """Gradient descent on f(w) = (w - optimum)^2: w <- w - lr * 2 (w - optimum)."""
    path = [start]
    for _ in range(steps):
        path.append(path[-1] - lr * 2 * (path[-1] - optimum))
    return np.array(path)


def figure(study) -> Drawn | None:
    """Loss against one weight with gradient-descent steps; the 2-weight valley with optimizer trajectories."""
    runs = study.runs
    valley_runs = runs[(runs["problem"] == "valley") & (runs["last_step"] > 0)]
    a, b, c, source = _training_loss(valley_runs)
    optimum = np.linalg.solve(a, b)
    used, note = [], ""
    with style():
        fig = new_figure(14, 7.4)
        grid = fig.add_gridspec(3, 2, width_ratios=[1, 2.1])
        for i, (lr, verdict, color) in enumerate(((0.1, "too small: creeps", SMALL), (0.4, "good: a few steps", GOOD),
                                                  (1.05, "too large: overshoots, grows", LARGE))):
            ax = fig.add_subplot(grid[i, 0])
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
        ax = fig.add_subplot(grid[:, 1])
        trajectories = _trajectories(study, valley_runs)
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
        fig.colorbar(filled, ax=ax, label="training loss, MSE (contours log-spaced)", format="%.2g")
        colors = plotting.optimizer_colors(runs["label"])
        for label, trajectory, run in trajectories:
            used.append(run["run_id"])
            path = np.vstack([VALLEY_START, trajectory[["w1", "w2"]].to_numpy()])
            color = colors[run["label"]]
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
               f"Right: the valley problem's training loss over its two weights (curvatures 25:1), {source}")
    caption += (", with the path (w1, w2 after every step, dots every few steps) each optimizer took from (−2, 4) "
                "at its best lr." if trajectories else ".")
    return Drawn(fig, caption, used, note=note)


def _training_loss(valley_runs):
    """(A, b, c, where from) of the training MSE w'Aw - 2b'w + c: as the runs recorded it (tag
    optimstudy.problem.quadratic); for runs older than that tag, regenerated from the data (imports
    torch); with no runs, its expectation."""
    recorded = valley_runs.get("problem_quadratic", pd.Series(dtype=object)).dropna()
    if len(recorded):
        form = json.loads(recorded.iloc[0])
        source = "as its runs measured it on their training split"
    elif len(valley_runs):
        from optimstudy.problems import load_problem_data  # only here: it imports torch

        split_seed = int(valley_runs["split_seed"].dropna().iloc[0]) if valley_runs["split_seed"].notna().any() else 0
        val_fraction = float(valley_runs["val_fraction"].dropna().iloc[0]) \
            if valley_runs["val_fraction"].notna().any() else 0.0625
        data = load_problem_data("valley", split_seed=split_seed, val_fraction=val_fraction, device="cpu")
        x, y = data.train.x.double().numpy(), data.train.y.double().numpy()
        form = {"a": x.T @ x / len(y), "b": x.T @ y / len(y), "c": float(y @ y / len(y))}
        source = "regenerated from its data"
    else:
        form, source = expected_valley_quadratic(), "its expectation over the data"
    return np.asarray(form["a"], dtype=float), np.asarray(form["b"], dtype=float), float(form["c"]), source


def _trajectories(study, valley_runs):
    """Per optimizer: (label, w1/w2 per step, run) of its best lr's first seed."""
    if valley_runs.empty:
        return []
    chosen = []
    best = study.best[study.best["problem"] == "valley"]
    for _, row in best.sort_values("trials", ascending=False, kind="stable").drop_duplicates("optimizer").iterrows():
        members = group_runs(valley_runs, row)
        at = members[np.isclose(members["lr"], row["lr"])] if pd.notna(row["lr"]) else members
        if at.empty:
            continue
        run = at.sort_values("seed").iloc[0]
        weights = study.points([run["run_id"]], ["w1", "w2"]).pivot_table(index="step", columns="metric",
                                                                           values="value")
        if not {"w1", "w2"} <= set(weights.columns):
            continue
        label = f"{run['label']} lr {lr_text(run['lr'])} ({int(run['last_step'])} steps)"
        chosen.append((label, weights.sort_index(), run))
    order = list(plotting.optimizer_colors([]))  # registry order
    return sorted(chosen, key=lambda item: order.index(item[2]["label"]) if item[2]["label"] in order else 99)


if __name__ == "__main__":
    from optimstudy.cli import analysis_script_main

    raise SystemExit(analysis_script_main(figure))
