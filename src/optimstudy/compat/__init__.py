"""Every use of another library's private API, one module per library, each with a test.

optimstudy leans on a few things its dependencies do not promise to keep: MLflow's store behind
its client, its name checks and its table layout (mlflow.py); Optuna's storage wrapper and the
Trial constructor (optuna.py); torch's fused list ops and a module its optimizers import late
(torch.py); CPython's atexit runner (python.py). Each function says which private API it uses,
why no public one serves, and what happens when it changes; tests/compat/test_compat.py checks each
one as relied upon, so a library upgrade that breaks one fails there, not in a user's sweep.

This package imports nothing at its top. mlflow.py and python.py import only the standard
library (MLflow inside functions): the MLflow writer process, a plain script started without
torch or the rest of optimstudy, loads mlflow.py.
"""
