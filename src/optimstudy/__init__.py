"""optimstudy: how optimizers and learning rates shape training, measured.

    from optimstudy import RunConfig, train
    history = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=500))
    print(history.final["excess_loss"])

This module is the public API: what a user's problem module (`Problem`) and an analysis script
(`load_runs`, `load_study`, `Study`, the results tables) import. A figure script also uses
`optimstudy.results` (its tables and statistics), `optimstudy.report.plotting` (the shared style)
and `optimstudy.facts`; tests/test_architecture.py holds the examples and analysis scripts to that.
Everything else is internal; the subpackages are the architecture (docs/design.md).
"""
import importlib

__version__ = "0.1.0"

# Loaded on first use, so `optimstudy report`, `ui`, the writer process and the analysis scripts
# never import torch by importing optimstudy.
_EXPORTS = {
    "UsageError": "optimstudy.errors", "Stop": "optimstudy.errors",
    "RunConfig": "optimstudy.run.config", "History": "optimstudy.run.training", "train": "optimstudy.run.training",
    "Problem": "optimstudy.problems.registry", "DataInfo": "optimstudy.problems.data",
    "load_runs": "optimstudy.tracking.reader", "load_study": "optimstudy.tracking.reader",
    "Study": "optimstudy.results.study", "run_table": "optimstudy.results.tables",
    "best_configurations": "optimstudy.results.tables", "verdicts": "optimstudy.results.rankings",
    "summary_table": "optimstudy.results.summary",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'optimstudy' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
