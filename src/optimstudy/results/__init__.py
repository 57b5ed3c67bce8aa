"""Every number about a study, from one tidy table (pandas, numpy and scipy; never torch):
`tables` (one row per run, best configurations, edge warnings), `summary`, `verdicts` with their
statistics in `comparison` and `aggregates`, `study.Study` holding them all, computed once.

    from optimstudy import load_runs, Study
    study = Study(load_runs(experiments=["quickstart"]))
    study.best, study.summary, study.verdicts, study.answers
"""
import importlib

# the entry points, loaded on first use (`from optimstudy import results; results.best_configurations(runs)`)
_EXPORTS = {
    "RUN_METRICS": "tables", "RESULT_METRICS": "tables", "run_table": "tables", "best_configurations": "tables",
    "main_configurations": "tables", "edge_warnings": "tables", "group_runs": "tables", "summary_table": "summary",
    "time_to_target": "summary",
    "verdicts": "rankings", "answers": "rankings", "Study": "study",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'optimstudy.results' has no attribute {name!r}")
    return getattr(importlib.import_module(f"optimstudy.results.{_EXPORTS[name]}"), name)
