"""optimstudy: how optimizers and learning rates shape training, measured.

    from optimstudy import RunConfig, train
    history = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=500))
    print(history.final["excess_loss"])
"""
import importlib

__version__ = "0.1.0"
__all__ = ["RunConfig", "History", "UsageError", "train", "__version__"]

# Loaded on first use, so `optimstudy report`, `ui` and the analysis scripts never import torch.
_EXPORTS = {"RunConfig": "optimstudy.config", "History": "optimstudy.training",
            "train": "optimstudy.training", "UsageError": "optimstudy.errors"}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'optimstudy' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
