"""The report: the tracking store -> the results -> every script in analysis/ -> one HTML page.

    optimstudy report --experiment quickstart          # -> analysis/report.html
    optimstudy report --analysis my_plots/              # another folder of analysis scripts

The numbers come from optimstudy.results, computed once (results.Study); each figure is a script
in the analysis folder (see analysis/README.md and optimstudy.plotting), run here in turn, so a
script a user drops into analysis/ appears on the page without touching the package.

Which analysis folder: --analysis DIR when given; else ./analysis when it holds scripts; else
the analysis/ folder of the optimstudy checkout this package runs from.
"""
import html
import importlib.util
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from optimstudy.errors import UsageError
from optimstudy.results import RUN_METRICS, Study

RESULT_METRICS = ("train_loss", "val_loss", "val_accuracy")  # last step, divergence, time to target

PACKAGE_ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"  # the checkout's scripts
DEFAULT_ORDER = 100


@dataclass
class Section:
    name: str  # the script's file stem; the figure is figures/<name>.png
    title: str
    spec: str  # the experiment spec whose sweep fills it
    order: int = DEFAULT_ORDER
    caption: str = ""
    run_ids: tuple = ()
    note: str = ""  # why it is missing or partly empty
    error: str = ""
    table: str = ""  # HTML of a table the script returned with its figure
    metrics: tuple | None = None  # the per-step metrics the script reads (METRICS); None: all


# ---- the analysis scripts ---------------------------------------------------------------------

def analysis_folder(analysis=None) -> Path:
    """The folder of analysis scripts (see the module docstring for the rule)."""
    if analysis is not None:
        folder = Path(analysis)
        if not folder.is_dir() or not any(folder.glob("*.py")):
            raise UsageError(f"--analysis '{analysis}' holds no analysis scripts (*.py); see analysis/README.md "
                             "for how to write one")
        return folder
    for folder in (Path("analysis"), PACKAGE_ANALYSIS):
        if folder.is_dir() and any(folder.glob("*.py")):
            return folder
    raise UsageError("no analysis scripts: ./analysis/ holds no *.py and this installation has no analysis/ "
                     "folder; pass --analysis DIR (see analysis/README.md in the optimstudy repository)")


def load_scripts(folder: Path) -> list:
    """(Section, figure function or None) per *.py in the folder, in page order (ORDER, then name).
    A script that fails to import becomes a section with its error."""
    loaded = []
    for path in sorted(Path(folder).glob("*.py")):
        if path.name.startswith("_"):
            continue
        section = Section(path.stem, path.stem.replace("_", " "), "")
        try:
            spec = importlib.util.spec_from_file_location(f"optimstudy_analysis_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            function = module.figure
            section.title = getattr(module, "TITLE", section.title)
            section.spec = getattr(module, "SPEC", "")
            section.order = int(getattr(module, "ORDER", DEFAULT_ORDER))
            section.metrics = tuple(module.METRICS) if hasattr(module, "METRICS") else None
        except Exception as error:  # noqa: BLE001  a broken script costs its own section, not the page
            section.error = f"{path.name} did not load: {type(error).__name__}: {error}"
            function = None
        loaded.append((section, function))
    return sorted(loaded, key=lambda item: (item[0].order, item[0].name))


def metrics_needed(scripts) -> list[str] | None:
    """The metrics to read from the store: what the results need, and what each script declares
    (METRICS); None (all of them) when a script declares nothing."""
    wanted = set(RUN_METRICS) | set(RESULT_METRICS)
    for section, _ in scripts:
        if section.metrics is None and not section.error:
            return None
        wanted |= set(section.metrics or ())
    return sorted(wanted)


def draw(section: Section, function, study: Study, figures: Path, *, svg=True, debug=False) -> Section:
    """Run one script's figure(study) and save its figure as figures/<name>.png (and .svg)."""
    from optimstudy import plotting

    for stale in figures.glob(f"{section.name}.*"):
        stale.unlink()
    if function is None:
        return section
    try:
        drawn = function(study)
        if drawn is not None:
            plotting.save(drawn.figure, figures / section.name, svg=svg)
    except Exception as error:  # one broken figure must not cost the others; the page says so
        if debug:
            raise
        section.error = f"{type(error).__name__}: {error}"
        return section
    if drawn is None:
        section.note = f"no runs for it yet: run `optimstudy sweep {section.spec}`" if section.spec else \
            "no runs for it in this store"
    else:
        section.caption, section.run_ids, section.note = drawn.caption, tuple(drawn.run_ids), drawn.note
        if drawn.table is not None:
            section.table = html_table(drawn.table)
    return section


_pending: list = []  # what forked drawing processes draw: (scripts, study, folder, svg)


def _draw_one(index: int) -> Section:
    scripts, study, figures, svg = _pending
    section, function = scripts[index]
    return draw(section, function, study, figures, svg=svg)


def draw_all(scripts, study: Study, figures: Path, *, svg=True, debug=False) -> list[Section]:
    """Every script's figure; on Linux in forked processes, one per core: drawing is most of a report's
    time, and a fork inherits the results already computed (nothing is pickled but the sections)."""
    import multiprocessing
    import os

    workers = min(len(scripts), os.cpu_count() or 1)
    if debug or workers < 2 or sys.platform != "linux":
        return [draw(section, function, study, figures, svg=svg, debug=debug) for section, function in scripts]
    study.summary, study.verdicts  # noqa: B018  computed once, before the fork, for every script to share
    _pending[:] = [scripts, study, figures, svg]
    try:  # ProcessPoolExecutor, not Pool: a drawing process that dies raises here instead of hanging
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_draw_one, range(len(scripts))))
    finally:
        _pending.clear()


# ---- the command ----------------------------------------------------------------------------

def report_command(tracking_uri: str | None, experiments=None, out="analysis", analysis=None,
                   debug: bool = False, log_to_store: bool = True) -> int:
    """`optimstudy report`: 0, or 1 when a figure failed (the page says which and why).
    log_to_store: also attach the page to each sweep's parent run (the one write to the store)."""
    import matplotlib

    from optimstudy.store import load_study
    from optimstudy.tracking import log_report, resolve_tracking_uri

    matplotlib.use("Agg")
    tracking_uri = resolve_tracking_uri(tracking_uri)
    scripts = load_scripts(analysis_folder(analysis))
    started = time.perf_counter()
    frame = load_study(tracking_uri, experiments, metrics=metrics_needed(scripts))
    loaded = time.perf_counter() - started
    out = Path(out)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot write the report to '{out}': {error.strerror}") from None
    study = Study(frame)
    sections = write_report(study, out, scripts=scripts, tracking_uri=tracking_uri, debug=debug)
    logged = log_report(tracking_uri, sweep_parents(frame), out) if log_to_store else 0
    if log_to_store:
        refresh_notes(study, tracking_uri)
    drawn = sum(bool(s.caption) for s in sections)
    print(f"report: {len(study.runs)} runs from {study.runs['experiment'].nunique()} experiment(s); {drawn} figures "
          f"from {analysis_folder(analysis)} in {out / 'figures'}; table in {out / 'summary.csv'} (loaded in {loaded:.1f} s, "
          f"total {time.perf_counter() - started:.1f} s)", file=sys.stderr)
    for section in sections:
        if section.note and not section.error:
            print(f"note: {section.title}: {section.note}", file=sys.stderr)
        if section.error:
            print(f"error: figure '{section.name}' failed: {section.error}", file=sys.stderr)
    if logged:
        print(f"logged the report as artifacts of {logged} sweep parent run(s) (artifact folder 'report')",
              file=sys.stderr)
    print(f"open {(out / 'report.html').resolve().as_uri()}")
    return 1 if any(s.error for s in sections) else 0


def draw_alone(function, name: str, tracking_uri: str | None, experiments, out) -> int:
    """One analysis script run on its own: its figure as out/<name>.png and .svg, its caption printed."""
    import matplotlib

    from optimstudy.store import load_study
    from optimstudy.tracking import resolve_tracking_uri

    matplotlib.use("Agg")
    import inspect

    section = Section(name, name, "", metrics=getattr(inspect.getmodule(function), "METRICS", None))
    metrics = metrics_needed([(section, function)])
    study = Study(load_study(resolve_tracking_uri(tracking_uri), experiments, metrics=metrics))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    section = draw(section, function, study, out)
    if section.error:
        print(f"{name}: failed: {section.error}", file=sys.stderr)
        return 1
    if section.note:
        print(f"note: {section.note}", file=sys.stderr)
    if section.caption:
        print(f"{out / name}.png: {section.caption}")
    return 0


def refresh_notes(study: Study, tracking_uri: str) -> None:
    """Each sweep parent run's description in the MLflow UI, redrawn from these results."""
    from optimstudy.notes import study_note
    from optimstudy.tracking import set_notes

    runs = study.runs
    if runs.empty or "parent_run_id" not in runs:
        return
    children = runs[runs["parent_run_id"].notna()]
    for (parent, experiment), _ in children.groupby([children["parent_run_id"].astype(str),
                                                     children["experiment"].astype(str)]):
        set_notes(tracking_uri, parent, study_note(study, experiment), experiment)


def sweep_parents(frame: pd.DataFrame) -> list[str]:
    """Sweep parent runs in the frame: the parents of its trials, and runs tagged kind=sweep."""
    parents = set(frame["parent_run_id"].dropna().astype(str).unique()) if "parent_run_id" in frame else set()
    if "kind" in frame:
        parents |= set(frame.loc[frame["kind"].astype(object) == "sweep", "run_id"].astype(str).unique())
    return sorted(parents)


def write_report(study, out, *, analysis=None, scripts=None, tracking_uri: str = "", debug=False,
                 svg=True) -> list[Section]:
    """Every analysis script's figure under out/figures, out/summary.csv and out/report.html.
    `scripts`: from load_scripts (default: those of analysis_folder(analysis))."""
    study = study if isinstance(study, Study) else Study(study)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    scripts = load_scripts(analysis_folder(analysis)) if scripts is None else scripts
    sections = draw_all(scripts, study, out / "figures", svg=svg, debug=debug)
    study.summary.to_csv(out / "summary.csv", index=False)
    (out / "report.html").write_text(render_page(study, sections, tracking_uri), encoding="utf-8")
    return sections


# ---- the page -------------------------------------------------------------------------------

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1300px; margin: 2em auto; padding: 0 1em; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; }
.note { color: #8a5a00; } .error { color: #b00020; } .warn { color: #8a5a00; }
.source { color: #555; font-size: 0.9em; }
"""

SUMMARY_TEXT = (
    "Each optimizer's best configuration is the one with the best mean final objective over seeds: the metric "
    "and direction the sweep declared (default: validation loss, lower is better), the same rule the sweep "
    "used; a configuration with a diverged seed ranks below every one without, and confirmation runs on new "
    "seeds never compete. The interval is a bootstrap 95% interval of the median over seeds. Robust lr range: "
    "the learning rates around the best whose mean is within 10% of it. Time to target (as in AlgoPerf): the "
    "median over seeds of the first evaluation step at which the validation metric reached the problem's "
    "target, a seed that never reached it counting as infinitely slow. Also in <a href='summary.csv'>"
    "summary.csv</a>.")
VERDICT_TEXT = (
    "Each pair of optimizers at their best configurations, on the same problem and setting. With the same seeds "
    "on both sides the per-seed differences are bootstrapped; otherwise a Mann-Whitney rank test decides. "
    "A verdict needs the 95% interval of the difference to exclude 0 (p &lt; 0.05) and at least 3 seeds; "
    "'seeds needed' estimates how many seeds would separate them at the spread observed.")


def html_table(table: pd.DataFrame) -> str:
    return "<div class='wide'>" + table.to_html(index=False, na_rep="", border=0, escape=True) + "</div>"


def render_page(study: Study, sections, tracking_uri) -> str:
    e = html.escape
    summary = study.summary
    warnings = [w for w in summary["edge_warning"] if w]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>optimstudy report</title>"
             f"<style>{PAGE_STYLE}</style></head><body>",
             "<h1>optimstudy report: how optimizers and learning rates shape training</h1>",
             f"<p class='source'>Drawn from the tracking store <code>{e(tracking_uri)}</code> on "
             f"{time.strftime('%Y-%m-%d %H:%M')}; regenerate with <code>optimstudy report</code>.</p>",
             "<h2>Runs</h2>", html_table(runs_overview(study.runs)),
             "<h2>Summary: each optimizer at its best configuration</h2>", f"<p>{SUMMARY_TEXT}</p>",
             html_table(summary_view(summary))]
    if warnings:
        parts.append("<h3>Edge-of-grid warnings</h3><p>The best lr at the edge of what was tried means the true "
                     "optimum may lie outside it: the comparison is not yet fair to that optimizer.</p><ul>")
        parts += [f"<li class='warn'>{e(w)}</li>" for w in dict.fromkeys(warnings)]
        parts.append("</ul>")
    else:
        parts.append("<p>No edge-of-grid warnings: every best lr lies inside the range tried.</p>")
    parts += ["<h2>Verdicts: which optimizer is better, and is it decided?</h2>", f"<p>{VERDICT_TEXT}</p>"]
    parts += verdict_tables(study.verdicts)
    for number, section in enumerate(sections, start=1):
        parts.append(f"<h2>{number}. {e(section.title)}</h2>")
        if section.error:
            parts.append(f"<p class='error'>This figure failed: {e(section.error)}. Rerun with "
                         "<code>optimstudy --debug report</code> for the traceback.</p>")
            continue
        if section.caption:
            parts.append(f"<p><img src='figures/{e(section.name)}.png' alt='{e(section.title)}'></p>")
            parts.append(f"<p>{e(section.caption)}</p>")
            parts.append(f"<p class='source'>Drawn from {e(sources(study.runs, section.run_ids))} by "
                         f"<code>{e(section.name)}.py</code>.</p>")
        parts.append(section.table)
        if section.note:
            parts.append(f"<p class='note'>{e(section.note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def sources(runs: pd.DataFrame, run_ids) -> str:
    used = runs[runs["run_id"].isin(set(map(str, run_ids)))]
    if used.empty:
        return "no runs (computed from the lesson's numbers and generated data)"
    counts = used["experiment"].value_counts().sort_index()
    return ", ".join(f"experiment '{name}' ({count} run{'s' if count != 1 else ''})" for name, count in counts.items())


def runs_overview(runs: pd.DataFrame) -> pd.DataFrame:
    status = runs["status"]
    return runs.assign(finished=status == "FINISHED", failed=status == "FAILED", killed_or_pruned=status == "KILLED",
                       diverged=runs["diverged"].astype(bool)).groupby("experiment").agg(
        runs=("run_id", "size"), finished=("finished", "sum"), diverged=("diverged", "sum"), failed=("failed", "sum"),
        killed_or_pruned=("killed_or_pruned", "sum"), problems=("problem", lambda s: ", ".join(sorted(s.unique()))),
        optimizers=("label", lambda s: ", ".join(sorted(s.unique())))).reset_index()


def _value(value, metric, spread=False) -> str:
    if pd.isna(value):
        return ""
    if metric.endswith("accuracy"):
        return f"{value:.2%}"
    return f"{value:.2g}" if spread else f"{value:.4g}"


def summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as the page shows it: numbers as text, intervals in one column."""
    shown = pd.DataFrame({"experiment": summary["experiment"], "problem": summary["problem"],
                          "optimizer": summary["optimizer"], "setting": summary["setting"]})
    shown["best lr"] = [f"{v:.3g}" if pd.notna(v) else "all diverged" if d else "no finished run"
                        for v, d in zip(summary["best_lr"], summary["diverged_seeds"])]
    shown["arguments"] = summary["optimizer_args"]
    shown["metric"] = [f"{m} ({'higher' if d == 'maximize' else 'lower'} is better)"
                       for m, d in zip(summary["metric"], summary["direction"])]
    shown["mean ± std"] = [f"{_value(m, k)} ± {_value(s, k, spread=True)}" if pd.notna(s) else _value(m, k)
                           for m, s, k in zip(summary["mean"], summary["std"], summary["metric"])]
    shown["median [95% interval]"] = [
        f"{_value(m, k)} [{_value(lo, k)}, {_value(hi, k)}]" if pd.notna(lo) else _value(m, k)
        for m, lo, hi, k in zip(summary["median"], summary["ci_low"], summary["ci_high"], summary["metric"])]
    shown["seeds"] = [f"{s} ({d} diverged)" if d else f"{s}" for s, d in zip(summary["seeds"],
                                                                             summary["diverged_seeds"])]
    shown["confirmed on new seeds"] = [
        f"{_value(m, k)} ± {_value(s, k, spread=True)} ({n} seeds)" if n else ""
        for m, s, n, k in zip(summary["confirm_mean"], summary["confirm_std"], summary["confirm_seeds"],
                              summary["metric"])]
    shown["lrs tried"] = summary["lr_range"]
    shown["robust lr range"] = summary["robust_lr_range"]
    shown["trials"] = summary["trials"]
    shown["target"] = summary["target"]
    shown["steps to target"] = [
        (f"{v:,.0f}" + (f" [{lo:,.0f}, {hi:,.0f}]" if pd.notna(lo) and pd.notna(hi) else "")) if pd.notna(v)
        else ("not reached" if t else "no target")
        for v, lo, hi, t in zip(summary["steps_to_target"], summary["steps_ci_low"], summary["steps_ci_high"],
                                summary["target"])]
    shown["seconds to target"] = summary["seconds_to_target"].map(lambda v: f"{v:.3g}" if pd.notna(v) else "")
    shown["target reached"] = summary["target_reached"]
    empty = [c for c in ("setting", "arguments", "confirmed on new seeds") if not shown[c].astype(bool).any()]
    return shown.drop(columns=empty)


def verdict_tables(verdicts: pd.DataFrame) -> list[str]:
    if verdicts.empty:
        return ["<p>No problem has two optimizers with finished runs to compare yet.</p>"]
    parts = []
    settings = verdicts.groupby(["experiment", "problem"])["setting_key"].nunique()
    for (experiment, problem, setting), rows in verdicts.groupby(["experiment", "problem", "setting_key"], sort=True):
        shown = pd.DataFrame({
            "A": rows["a"], "B": rows["b"], "verdict": rows["verdict"], "test": rows["test"],
            f"difference A − B ({rows['metric'].iloc[0]})": rows["difference"].map(lambda v: f"{v:.3g}"),
            "95% interval": [f"[{lo:.3g}, {hi:.3g}]" if pd.notna(lo) else "" for lo, hi in
                             zip(rows["ci_low"], rows["ci_high"])],
            "p": rows["p_value"].map(lambda v: f"{v:.3g}" if pd.notna(v) else ""),
            "seeds": rows["seeds"],
            "seeds needed": rows["seeds_needed"].map(lambda v: f"~{v:.0f}" if pd.notna(v) else "")})
        parts.append(f"<h3>{html.escape(problem)} ({html.escape(experiment)})</h3>")
        if settings[(experiment, problem)] > 1:
            parts.append(f"<p class='source'>setting: {html.escape(setting)}</p>")
        parts.append(html_table(shown))
    return parts
