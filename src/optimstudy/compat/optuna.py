"""Optuna internals the study's queue relies on (sweep/queue.py)."""
import itertools
from datetime import UTC

import optuna


def cached_storage(storage):
    """`storage` as Optuna's studies use it: an RDB storage wrapped in Optuna's trial cache, any
    other storage as it is; a storage already wrapped comes back unchanged.

    Private: `optuna.storages.get_storage`, documented "Only for internal usage". load_study wraps
    an RDB storage in a fresh cache on every call; the queue opens a study per trial, and the trial
    it took must be in the cache that study writes through, so it wraps once and passes the wrapped
    storage on. No public function does that. If it changes: an ImportError or TypeError at a
    sweep's first trial; tests/compat/test_compat.py fails first."""
    return optuna.storages.get_storage(storage)


def trial_of(study, trial_id: int):
    """The Trial for `trial_id`, a trial this worker already set RUNNING, as Study.ask returns it.

    Semi-private: `optuna.Trial(study, trial_id)`, whose docs advise against calling it directly;
    it is how Study.ask wraps the trial it pops. There is no public "ask this trial": Study.ask
    on an empty queue creates a new, unplanned trial instead. If it changes: a TypeError at a
    sweep's first trial; tests/compat/test_compat.py fails first."""
    return optuna.Trial(study, trial_id)


def add_trials(study, templates, count: int, chunk: int = 5000) -> None:
    """study.add_trial(template) for each template (FrozenTrials, as optuna.trial.create_trial makes
    them; Study.enqueue_trial's are WAITING with system_attrs {"fixed_params": params}), in order;
    on a journal storage `chunk` at a time, in one write each. `templates` may be a generator of
    `count` trials: made as they are written, they never all sit in memory at once.

    Private: a JournalStorage writes (and fsyncs) one record per trial, each a slow fsync, so queuing
    100,000 trials took over 400 s; this writes the records Optuna's JournalStorage.create_new_trial
    writes (its `_write_log`, `_backend.append_logs`, `_sync_with_backend`, `_thread_lock`,
    `_replay_result.worker_id` and JournalOperation.CREATE_TRIAL), many per fsync. Any other
    storage, or a journal backend that keeps snapshots, goes one trial at a time through the public
    method (Study.add_trial). Also private: the study's `_storage` and `_study_id`. If it changes: an
    AttributeError or a different trial than Study.enqueue_trial makes; tests/compat/test_compat.py compares the two."""
    # on use: a private module, so that a change there fails a sweep's queuing, not every import
    from optuna.storages.journal._storage import BaseJournalSnapshot, JournalOperation

    storage, study_id = study._storage, study._study_id
    if not isinstance(storage, optuna.storages.JournalStorage) or isinstance(storage._backend, BaseJournalSnapshot):
        for template in templates:
            study.add_trial(template)
        return
    templates = iter(templates)
    for _ in range(0, count, chunk):
        with storage._thread_lock:
            worker_id = storage._replay_result.worker_id
            storage._backend.append_logs([{"op_code": JournalOperation.CREATE_TRIAL, "worker_id": worker_id,
                                           **_create_trial_log(study_id, template)}
                                          for template in itertools.islice(templates, chunk)])
            storage._sync_with_backend()


def _create_trial_log(study_id: int, template) -> dict:
    """The record JournalStorage.create_new_trial writes for `template` (optuna 4.x-5.x)."""

    from optuna.distributions import distribution_to_json  # with the journal's records, as above

    values = template.values
    log = {"study_id": study_id, "state": template.state,
           "value": None if values is not None and len(values) > 1 else template.value,
           "values": values if values is not None and len(values) > 1 else None,
           "datetime_start": (template.datetime_start.astimezone(UTC).isoformat(timespec="microseconds")
                              if template.datetime_start else None)}
    if template.datetime_complete:
        log["datetime_complete"] = template.datetime_complete.astimezone(UTC).isoformat(
            timespec="microseconds")
    log["distributions"] = {k: distribution_to_json(d) for k, d in template.distributions.items()}
    log["params"] = {k: template.distributions[k].to_internal_repr(v) for k, v in template.params.items()}
    log.update(user_attrs=template.user_attrs, system_attrs=template.system_attrs,
               intermediate_values=template.intermediate_values)
    return log
