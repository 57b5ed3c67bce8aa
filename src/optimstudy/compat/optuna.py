"""Optuna internals the study's queue relies on (sweep/queue.py)."""
import optuna


def cached_storage(storage):
    """`storage` as Optuna's studies use it: an RDB storage wrapped in Optuna's trial cache, any
    other storage as it is; a storage already wrapped comes back unchanged.

    Private: `optuna.storages.get_storage`, documented "Only for internal usage". load_study wraps
    an RDB storage in a fresh cache on every call; the queue opens a study per trial, and the trial
    it took must be in the cache that study writes through, so it wraps once and passes the wrapped
    storage on. No public function does that. If it changes: an ImportError or TypeError at a
    sweep's first trial; tests/test_compat.py fails first."""
    return optuna.storages.get_storage(storage)


def trial_of(study, trial_id: int):
    """The Trial for `trial_id`, a trial this worker already set RUNNING, as Study.ask returns it.

    Semi-private: `optuna.Trial(study, trial_id)`, whose docs advise against calling it directly;
    it is how Study.ask wraps the trial it pops. There is no public "ask this trial": Study.ask
    on an empty queue creates a new, unplanned trial instead. If it changes: a TypeError at a
    sweep's first trial; tests/test_compat.py fails first."""
    return optuna.Trial(study, trial_id)
