"""The report's HTML page: the runs, the summary of each optimizer at its best, the verdicts, the figures.

    from optimstudy.report.page import render_page
    html = render_page(study, sections, tracking_uri)   # sections: report.Section, one per figure
"""
import html
import time

import pandas as pd

from optimstudy.results.objectives import selection_warning
from optimstudy.results.study import Study

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
    "seeds never compete. The interval is Student's t 95% interval of the mean over seeds (from 3 seeds; with "
    "2, their range). Robust lr range: "
    "the learning rates around the best whose mean is within 10% of it. Time to target (as in AlgoPerf): the "
    "median over seeds of the first evaluation step at which the validation metric reached the problem's "
    "target, a seed that never reached it counting as infinitely slow (its interval: the distribution-free "
    "order-statistic interval of the median, which needs 6 seeds). Also in <a href='summary.csv'>"
    "summary.csv</a>.")
VERDICT_TEXT = (
    "Each pair of optimizers at their best configurations, on the same problem and setting, paired on the seeds "
    "both have: a paired t-test on the per-seed differences; with a diverged seed among them, the exact "
    "signed-rank test (a diverged seed is its side's worst value), from 6 seeds; with fewer than 3 shared seeds, "
    "the exact Mann-Whitney rank test. Failed runs and seeds one side lacks are left out and named in the "
    "evidence. A study that adds seeds until decided (<code>--until-decided</code>) is tested at every look by "
    "the sequential signed-rank test, whose error stays at 5% however the looks fall. All pairs of a problem "
    "and setting are one family: a pair is decided only when its Holm-adjusted p is below 0.05, so the chance "
    "of any false 'better' on the problem stays at 5% (measured by simulation: docs/results.md). Seeds that "
    "give identical results decide nothing. 'Seeds needed': the seeds at which a real difference of the size "
    "observed would be found 80% of the time, and in brackets the range the seeds so far allow.")
ANSWER_TEXT = (
    "Per problem, every optimizer, best first, written so that nothing on the line is false. Where the decided "
    "pairs split them into ordered groups: '&gt;' (every optimizer before it is decided better than every one "
    "after it, Holm 5%) and '≈' (not decided apart). Otherwise letters: optimizers sharing a letter are not "
    "decided apart, and of two that share none the first is decided better. In brackets: the seeds that "
    "decided it, and what a study that adds seeds until decided spent.")


NOT_SHOWN = "no runs for these yet"  # the heading of the sections left off the page, on it and on the terminal


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
             *answer_section(study),
             "<h2>Runs</h2>", html_table(runs_overview(study.runs)),
             "<h2>Summary: each optimizer at its best configuration</h2>", f"<p>{SUMMARY_TEXT}</p>"]
    leaks = dict.fromkeys(selection_warning(metric) for metric in summary["metric"])
    parts += [f"<p class='warn'>Warning: {e(w)}.</p>" for w in leaks if w]
    parts.append(html_table(summary_view(summary)))
    if warnings:
        parts.append("<h3>Edge-of-grid warnings</h3><p>The best lr at the edge of what was tried means the true "
                     "optimum may lie outside it: the comparison is not yet fair to that optimizer.</p><ul>")
        parts += [f"<li class='warn'>{e(w)}</li>" for w in dict.fromkeys(warnings)]
        parts.append("</ul>")
    else:
        parts.append("<p>No edge-of-grid warnings: every best lr lies inside the range tried.</p>")
    parts += ["<h2>Verdicts: which optimizer is better, and is it decided?</h2>", f"<p>{VERDICT_TEXT}</p>"]
    parts += verdict_tables(study.verdicts)
    shown = [section for section in sections if not section.no_data]
    for number, section in enumerate(shown, start=1):
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
    parts += not_shown(sections)
    parts.append("</body></html>")
    return "\n".join(parts)


def not_shown(sections) -> list[str]:
    """The sections with no data in the runs reported, unnumbered, at the page's end: each with its command."""
    waiting = [section for section in sections if section.no_data]
    if not waiting:
        return []
    e = html.escape
    lines = [f"<li>{e(s.title)} — " + (f"<code>{e(s.command)}</code>" if s.command else e(s.note)) + "</li>"
             for s in waiting]
    return [f"<h2>Not shown: {NOT_SHOWN}</h2>", "<ul class='source'>", *lines, "</ul>"]


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
    if metric.endswith(("accuracy", "error_rate")):
        return f"{value:.2%}"
    return f"{value:.2g}" if spread else f"{value:.4g}"


def summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as the page shows it: numbers as text, intervals in one column."""
    shown = pd.DataFrame({"experiment": summary["experiment"], "problem": summary["problem"],
                          "optimizer": summary["optimizer"], "setting": summary["setting"]})
    shown["best lr"] = [f"{v:.3g}" if pd.notna(v) else "all diverged" if d else (why or "no finished run")
                        for v, d, why in zip(summary["best_lr"], summary["diverged_seeds"], summary["no_outcome"])]
    shown["arguments"] = summary["optimizer_args"]
    shown["metric"] = [f"{m} ({'higher' if d == 'maximize' else 'lower'} is better)"
                       for m, d in zip(summary["metric"], summary["direction"])]
    shown["mean ± std"] = [f"{_value(m, k)} ± {_value(s, k, spread=True)}" if pd.notna(s) else _value(m, k)
                           for m, s, k in zip(summary["mean"], summary["std"], summary["metric"])]
    shown["95% interval of the mean"] = [
        (f"[{_value(lo, k)}, {_value(hi, k)}]" if kind == "t" else f"range {_value(lo, k)}..{_value(hi, k)}")
        if pd.notna(lo) else "" for lo, hi, kind, k in zip(summary["ci_low"], summary["ci_high"], summary["ci_kind"],
                                                           summary["metric"])]
    shown["median"] = [_value(m, k) for m, k in zip(summary["median"], summary["metric"])]
    shown["seeds"] = [f"{s} ({d} diverged)" if d else f"{s}" for s, d in zip(summary["seeds"],
                                                                             summary["diverged_seeds"])]
    shown["confirmed on new seeds"] = [
        f"{_value(m, k)} ± {_value(s, k, spread=True)} ({n} seeds)" if n else ""
        for m, s, n, k in zip(summary["confirm_mean"], summary["confirm_std"], summary["confirm_seeds"],
                              summary["metric"])]
    for name in ("test_loss", "test_accuracy", "test_error_rate"):  # report only: the mean over the seeds
        shown[name.replace("_", " ")] = [_value(v, name) for v in summary[name]]
    shown["lrs tried"] = summary["lr_range"]
    shown["robust lr range"] = summary["robust_lr_range"]
    shown["trials"] = summary["trials"]
    shown["target"] = summary["target"]
    shown["steps to target"] = [
        (f"{v:,.0f}" + (f" [{lo:,.0f}, {hi:,.0f}]" if kind == "order" and pd.notna(lo) and pd.notna(hi) else ""))
        if pd.notna(v) else ("not reached" if t else "no target")
        for v, lo, hi, kind, t in zip(summary["steps_to_target"], summary["steps_ci_low"], summary["steps_ci_high"],
                                      summary["steps_ci_kind"], summary["target"])]
    shown["seconds to target"] = summary["seconds_to_target"].map(lambda v: f"{v:.3g}" if pd.notna(v) else "")
    shown["target reached"] = summary["target_reached"]
    empty = [c for c in ("setting", "arguments", "confirmed on new seeds", "test loss", "test accuracy",
                         "test error rate") if not shown[c].astype(bool).any()]
    return shown.drop(columns=empty)


def answer_section(study: Study) -> list[str]:
    answers = study.answers
    if answers.empty:
        return []
    e = html.escape
    parts = ["<h2>The answer</h2>", f"<p>{ANSWER_TEXT}</p>", "<ul>"]
    settings = answers.groupby(["experiment", "problem"])["setting_key"].transform("nunique")
    decided_first = answers.assign(_several=settings).sort_values("decided_pairs", ascending=False, kind="stable")
    for row, several in zip(decided_first.itertuples(), decided_first["_several"]):
        where = f"{row.problem} ({row.experiment}" + (f", {row.setting_key}" if several > 1 else "") + ")"
        line = (f"<li><b>{e(where)}</b>, {e(row.metric)}: <b>{e(row.ranking)}</b> "
                f"<span class='source'>({e(row.basis)})</span>")
        if row.undecided:
            line += f"<br><span class='source'>Still open: {e(row.undecided)}</span>"
        if row.no_variation:
            line += (f"<br><span class='warn'>No variation over seeds ({e(row.no_variation)}): no evidence about "
                     "noise; vary the data split or the initialisation.</span>")
        parts.append(line + "</li>")
    return parts + ["</ul>"]


def seeds_needed_cell(row) -> str:
    """'~18 (9 to 60)': the seeds for 80% power at the difference seen, and the range the seeds allow."""
    if row["decided"] or not pd.notna(row["seeds_needed"]):
        return ""
    low, high = row.get("seeds_needed_low"), row.get("seeds_needed_high")
    if not pd.notna(low):
        return f"~{row['seeds_needed']:.0f}"
    return f"~{row['seeds_needed']:.0f} ({low:.0f} to {f'{high:.0f}' if pd.notna(high) else 'no limit'})"


def verdict_tables(verdicts: pd.DataFrame) -> list[str]:
    if verdicts.empty:
        return ["<p>No problem has two optimizers with finished runs to compare yet.</p>"]
    parts = []
    settings = verdicts.groupby(["experiment", "problem"])["setting_key"].nunique()
    for (experiment, problem, setting), rows in verdicts.groupby(["experiment", "problem", "setting_key"], sort=True):
        shown = pd.DataFrame({
            "A": rows["a"], "B": rows["b"], "verdict": rows["verdict"],
            f"difference A − B ({rows['metric'].iloc[0]})": rows["difference"].map(lambda v: f"{v:.3g}"),
            "95% interval": [f"[{lo:.3g}, {hi:.3g}]" if pd.notna(lo) else "" for lo, hi in
                             zip(rows["ci_low"], rows["ci_high"])],
            "p": rows["p_value"].map(lambda v: f"{v:.2g}" if pd.notna(v) else ""),
            "Holm p": rows["p_holm"].map(lambda v: f"{v:.2g}" if pd.notna(v) else ""),
            "seeds": rows["seeds"],
            "seeds needed": [seeds_needed_cell(row) for row in rows.to_dict("records")],
            "evidence": rows["evidence"]})
        parts.append(f"<h3>{html.escape(problem)} ({html.escape(experiment)})</h3>")
        if settings[(experiment, problem)] > 1:
            parts.append(f"<p class='source'>setting: {html.escape(setting)}</p>")
        parts.append(html_table(shown))
    return parts

