"""What the MLflow UI says about a study: the sweep parent run's description, in Markdown.

MLflow shows a run's `mlflow.note.content` tag as its description. The sweep writes this note
when it ends and `optimstudy report` refreshes it, both from the one results layer, so the UI,
the terminal table and the report page give the same answer.

    from optimstudy.results.notes import study_note
    study_note(results.Study(frame), "quickstart")   # -> Markdown text
"""
import math

import pandas as pd

# what could end a table cell, open a link or an image, HTML or a code span, or escape the next
# character, as entities every Markdown renderer shows as the character itself ("&" too: an entity
# typed in a label shows as typed); emphasis (* _) is left alone: it can only restyle the text
_MARKDOWN_ENTITIES = {"&": "&amp;", "\\": "&#92;", "|": "&#124;", "`": "&#96;", "<": "&lt;", ">": "&gt;",
                      "[": "&#91;", "]": "&#93;"}


def markdown_text(value) -> str:
    """`value` as text inside Markdown (a table cell, a list item): it shows as typed and starts no
    markup; a newline becomes a space. Every value the note quotes (labels, problems, warnings)
    goes through here; MLflow's sanitiser is then not the only guard.

        markdown_text("a|b <i>")   # 'a&#124;b &lt;i&gt;'
    """
    text = str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return "".join(_MARKDOWN_ENTITIES.get(char, char) for char in text)


def study_note(study, experiment: str, description: str = "") -> str:
    """The best configuration per optimizer with its spread over seeds, warnings, verdicts and
    time to target, for one experiment (a sweep's study)."""
    summary = study.summary
    summary = summary[summary["experiment"] == experiment] if not summary.empty else summary
    lines = [f"**{markdown_text(experiment)}**: each optimizer at its best configuration (optimstudy results)", ""]
    if description:
        lines += [description.strip(), ""]
    if summary.empty:
        lines.append("No finished trial yet.")
    else:
        lines += _best_table(summary)
    warnings = [w for w in summary.get("edge_warning", pd.Series(dtype=str)) if w]
    if warnings:
        lines += ["", "**Warnings**", ""] + [f"- {markdown_text(w)}" for w in warnings]
    verdicts, answers = study.verdicts, study.answers
    if not verdicts.empty and "experiment" in verdicts:
        verdicts = verdicts[verdicts["experiment"] == experiment]
        answers = answers[answers["experiment"] == experiment]
        if not verdicts.empty:
            lines += ["", "**The answer** (best first; `>`: decided apart, Holm 5% over each problem's pairs)", ""]
            lines += [f"- {markdown_text(row.problem)}: {markdown_text(row.ranking)} ({markdown_text(row.basis)})"
                      for row in answers.itertuples()]
            decided = verdicts[verdicts["decided"].astype(bool)]
            if len(decided) < len(verdicts):
                lines.append(f"- {len(verdicts) - len(decided)} of {len(verdicts)} pairs are not decided with the "
                             "seeds run (see the report's verdict tables for the seeds each would need)")
    lines += ["", f"Figures and the full table: `optimstudy report --experiment {experiment}` "
                  "(analysis/report.html)."]
    return "\n".join(lines)


def _best_table(summary: pd.DataFrame) -> list[str]:
    header = ["problem", "optimizer", "best lr", "objective: mean [95% interval of the mean] (seeds)", "mean ± std",
              "confirmed on new seeds", "steps to target"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.itertuples():
        optimizer = row.optimizer + (f" ({row.setting})" if row.setting else "")
        lr = f"{row.best_lr:.3g}" if _finite(row.best_lr) else (getattr(row, "no_outcome", "") or "all diverged")
        if row.optimizer_args:
            lr += f" {row.optimizer_args}"
        interval = (f"{_number(row.mean)} [{_number(row.ci_low)}, {_number(row.ci_high)}"
                    f"{' (range)' if row.ci_kind == 'range' else ''}] (n={row.seeds})" if _finite(row.ci_low)
                    else f"{_number(row.mean)} (n={row.seeds})")
        spread = f"{_number(row.mean)} ± {_number(row.std if _finite(row.std) else 0.0)}" if _finite(row.mean) else ""
        confirmed = (f"{_number(row.confirm_mean)} ± {_number(row.confirm_std if _finite(row.confirm_std) else 0.0)}"
                     f" (n={int(row.confirm_seeds)})" if _finite(row.confirm_seeds) and row.confirm_seeds else "")
        reached = (f"{row.steps_to_target:,.0f} ({row.target}, {row.target_reached})" if _finite(row.steps_to_target)
                   else (f"not reached ({row.target})" if row.target else ""))
        cells = [row.problem, optimizer, lr, f"{row.metric} {interval}", spread, confirmed, reached]
        rows.append("| " + " | ".join(markdown_text(c) for c in cells) + " |")
    return rows


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _number(value) -> str:
    return f"{value:.4g}" if _finite(value) else "n/a"
