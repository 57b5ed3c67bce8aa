"""Sweeps: the spec (experiments as validated data), the plan of trials, Optuna's study and its
queue of trials, the workers that run them, `optimstudy sweep`, `check`, `ui` and `dashboard`."""
