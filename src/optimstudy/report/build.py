"""The report: the tracking store -> the results -> every figure script -> one HTML page.

    optimstudy report --experiment quickstart          # -> analysis/report.html
    optimstudy report --analysis my_plots/              # another folder of analysis scripts

The numbers come from optimstudy.results, computed once (results.study.Study); each figure is a script
(the built-in ones ship in optimstudy/report/figures/; see analysis/README.md and
optimstudy.report.plotting), run here in turn, so a script a user drops into ./analysis/ appears on
the page without touching the package.

Which analysis folder, and which of its scripts: see report/scripts.py.
"""
import ctypes
import inspect
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from optimstudy.errors import UsageError
from optimstudy.processes import interrupts_held, leave_interrupts
from optimstudy.report.csv_files import write_csv
from optimstudy.report.page import NOT_SHOWN, html_table, render_page

# Section, analysis_folder, load_scripts: imported from here by tests and users
from optimstudy.report.scripts import Section, analysis_folder, load_scripts
from optimstudy.report.store_writer import StoreWriter
from optimstudy.results.notes import study_note
from optimstudy.results.study import Study
from optimstudy.results.tables import RESULT_METRICS, RUN_METRICS
from optimstudy.tracking.client import resolve_tracking_uri
from optimstudy.tracking.connectivity import hide_passwords, probe_store
from optimstudy.tracking.parent_runs import is_read_only
from optimstudy.tracking.reader import load_study


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
    from optimstudy.report import plotting  # on first use: it imports matplotlib

    for stale in figures.glob(f"{section.name}.*"):
        stale.unlink()
    if function is None:
        return section
    try:
        drawn = function(study)
        if isinstance(drawn, plotting.Drawn):
            plotting.save(drawn.figure, figures / section.name, svg=svg)
    except Exception as error:  # one broken figure must not cost the others; the page says so
        if debug:
            raise
        section.error = f"{type(error).__name__}: {error}"
        return section
    if isinstance(drawn, str):  # the script says why it drew nothing
        section.note, section.no_data = drawn, True
    elif drawn is None:
        section.note = f"no runs for it yet: run `{section.command}`" if section.command else \
            "no runs for it in this store"
        section.no_data = True
    else:
        section.caption, section.run_ids, section.note = drawn.caption, tuple(drawn.run_ids), drawn.note
        # drawn from no run while saying what it needs (the lesson's numbers, generated data): nothing of these runs
        section.no_data = not section.run_ids and bool(section.note)
        if drawn.table is not None:
            section.table = html_table(drawn.table)
    return section


_pending: list = []  # what forked drawing processes draw: (scripts, study, folder, svg)


def _draw_one(index: int) -> Section:
    scripts, study, figures, svg = _pending
    section, function = scripts[index]
    return draw(section, function, study, figures, svg=svg)


def _trim_heap() -> None:
    """Give the heap freed since reading the store back to the system (glibc keeps it): otherwise this
    process and every fork of it each keep it resident (its size at 1M points: docs/performance.md)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def draw_all(scripts, study: Study, figures: Path, *, svg=True, debug=False) -> list[Section]:
    """Every script's figure; on Linux in forked processes, one per core: drawing is most of a report's
    time, and a fork inherits the results already computed (nothing is pickled but the sections)."""
    workers = min(len(scripts), os.cpu_count() or 1)
    if debug or workers < 2 or sys.platform != "linux":
        return [draw(section, function, study, figures, svg=svg, debug=debug) for section, function in scripts]
    study.summary, study.verdicts  # noqa: B018  computed once, before the fork, for every script to share
    _trim_heap()
    _pending[:] = [scripts, study, figures, svg]
    # ProcessPoolExecutor, not Pool: a drawing process that dies raises here instead of hanging
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=leave_interrupts)
    try:
        with interrupts_held():  # the forks happen at the first submit
            drawn = [pool.submit(_draw_one, index) for index in range(len(scripts))]
        return [future.result() for future in drawn]
    except KeyboardInterrupt:  # the figures not started are dropped; those being drawn finish, quietly
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown()
        _pending.clear()


# ---- the command ----------------------------------------------------------------------------

def report_command(tracking_uri: str | None, experiments=None, out="analysis", analysis=None,
                   debug: bool = False, log_to_store: bool = True) -> int:
    """`optimstudy report`: 0, or 1 when a figure failed (the page says which and why).
    log_to_store: also attach the page to each sweep's parent run (the one write to the store)."""
    import matplotlib  # on first use: it imports matplotlib

    matplotlib.use("Agg")
    tracking_uri = resolve_tracking_uri(tracking_uri)
    probe_store(tracking_uri)  # a server that is not there or refuses: exit 2 in seconds, as sweep and run
    folder = analysis_folder(analysis)
    if folder.note:
        print(f"note: {folder.note}", file=sys.stderr)
    for name, why in folder.skipped:
        print(f"note: {folder.path / name} is not a figure script ({why}): not run", file=sys.stderr)
    scripts = load_scripts(folder)
    started = time.perf_counter()
    read_only = ""  # why the store took nothing, when it is read-only
    with StoreWriter(tracking_uri, enabled=log_to_store, in_process=debug) as store:
        frame = load_study(tracking_uri, experiments, metrics=metrics_needed(scripts))
        loaded = time.perf_counter() - started
        out = Path(out)
        try:
            (out / "figures").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot write the report to '{out}': {error.strerror}") from None
        study = Study(frame)
        sections = write_report(study, out, scripts=scripts, tracking_uri=tracking_uri, debug=debug)
        try:
            logged = store.write(sweep_parents(frame), out, sweep_notes(study) if log_to_store else [])
        except Exception as error:  # a store we may read but not write: the page is written
            if not is_read_only(error):
                raise
            logged, read_only = 0, str(error).strip().splitlines()[0][:160]
    drawn = sum(bool(s.caption) and not s.no_data for s in sections)
    print(f"report: {len(study.runs)} runs from {study.runs['experiment'].nunique()} experiment(s); {drawn} figures "
          f"from {folder.path} in {out / 'figures'}; table in {out / 'summary.csv'} (loaded in {loaded:.1f} s, "
          f"total {time.perf_counter() - started:.1f} s)", file=sys.stderr)
    for section in sections:
        if section.note and not section.error and not section.no_data:
            print(f"note: {section.title}: {section.note}", file=sys.stderr)
        if section.error:
            print(f"error: figure '{section.name}' failed: {section.error}", file=sys.stderr)
    waiting = [s for s in sections if s.no_data]
    if waiting:  # as the page's end lists them
        print(f"note: not shown, {NOT_SHOWN}:", file=sys.stderr)
        for section in waiting:
            print(f"  {section.title} — {section.command or section.note}", file=sys.stderr)
    if read_only:
        print(hide_passwords(f"note: the tracking store is read-only ({read_only}): the report is written to "
                             f"{out} but nothing was attached to the sweep runs; pass --no-log-to-store to "
                             "only read the store"), file=sys.stderr)
    if logged:
        print(f"logged the report as artifacts of {logged} sweep parent run(s) (artifact folder 'report')",
              file=sys.stderr)
    print(f"open {(out / 'report.html').resolve().as_uri()}")
    return 1 if any(s.error for s in sections) else 0


def draw_alone(function, name: str, tracking_uri: str | None, experiments, out) -> int:
    """One analysis script run on its own: its figure as out/<name>.png and .svg, its caption printed."""
    import matplotlib  # on first use: it imports matplotlib

    matplotlib.use("Agg")

    section = Section(name, name, "", metrics=getattr(inspect.getmodule(function), "METRICS", None))
    metrics = metrics_needed([(section, function)])
    tracking_uri = resolve_tracking_uri(tracking_uri)
    probe_store(tracking_uri)
    study = Study(load_study(tracking_uri, experiments, metrics=metrics))
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


def sweep_notes(study: Study) -> list[tuple]:
    """(parent run id, experiment, note): each sweep parent run's description in the MLflow UI,
    redrawn from these results."""
    runs = study.runs
    if runs.empty or "parent_run_id" not in runs:
        return []
    children = runs[runs["parent_run_id"].notna()]
    return [(parent, experiment, study_note(study, experiment)) for (parent, experiment), _ in
            children.groupby([children["parent_run_id"].astype(str), children["experiment"].astype(str)])]


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
    write_csv(study.summary, out / "summary.csv")
    # the page is shared and attached to the parent runs: it names the store, never its password
    (out / "report.html").write_text(render_page(study, sections, hide_passwords(tracking_uri)), encoding="utf-8")
    return sections
