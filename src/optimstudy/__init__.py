"""optimstudy: how optimizers and learning rates shape training, measured.

    from optimstudy import RunConfig, train
    history = train(RunConfig(problem="linreg", optimizer="sgd", lr=0.1, steps=500))
    print(history.final["excess_loss"])
"""
from optimstudy.config import RunConfig
from optimstudy.errors import UsageError
from optimstudy.train import History, train

__version__ = "0.1.0"
__all__ = ["RunConfig", "History", "UsageError", "train", "__version__"]
