"""The study's queue: every planned trial queued once, taken by workers one at a time.

    with planning_lock(url, spec.name):           # storages.py: one planner, however many commands
        enqueue_missing(study, planned, ("val_loss", "minimize"))
    queue = Queue(spec, storage)
    study, trial, trial_id = queue.take()          # None once nothing is queued

Every configuration is queued (enqueued) once, by whichever command holds the study's planning
lock; workers take trials from the queue atomically (WAITING -> RUNNING is a compare-and-set in
every Optuna storage), so no configuration runs twice, even with workers on several machines.
"""
import collections
import json
import os
import socket
import time

import optuna
from optuna.trial import TrialState, create_trial

from optimstudy.compat.optuna import add_trials, cached_storage, trial_of
from optimstudy.sweep.planning import Planned, config_json
from optimstudy.sweep.spec import Spec
from optimstudy.sweep.storages import open_study
from optimstudy.tracking.connectivity import hide_passwords

KEY, PHASE, CONFIG, SPACE, SLOT = ("optimstudy.key", "optimstudy.phase", "optimstudy.config", "optimstudy.space",
                                   "optimstudy.slot")
ROUND = "optimstudy.round"  # a decide-phase trial's round
EXTENSIONS = "optimstudy.extensions"  # the study's: when its spec grew, and by what
ERROR = "optimstudy.error"
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def trial_key(attrs: dict) -> str | None:
    """A queued trial's key (planning.Planned.key), from its user attrs.

    Trials queued before the spec's label was part of the key have it added here, so that a study
    queued then resumes without running them again: a key without the label is an old one where
    the label is not the optimizer's own name (spec.config_key leaves only that one out).
    """
    key, label = attrs.get(KEY), attrs.get("optimizer")
    if key is None or label is None or label == (attrs.get(CONFIG) or {}).get("optimizer") \
            or f'"label": {json.dumps(label)}' in key:
        return key
    prefix, brace, rest = key.partition("{")  # a search trial's key: "search N {...}"
    return prefix + json.dumps({**json.loads(brace + rest), "label": label}, sort_keys=True, default=str)


def enqueue_missing(study, planned: list[Planned], objective: tuple[str, str], skip=frozenset()) -> list[Planned]:
    """Queue every planned trial that has no queued, running or finished trial yet, nor a key in
    `skip` (call it under planning_lock: two callers at once would both see a configuration missing)."""
    present = {trial_key(t.user_attrs) for t in study.get_trials(deepcopy=False, states=LIVE)} | set(skip)
    added = []
    for item in planned:
        if item.key not in present:
            present.add(item.key)
            added.append(item)
    # what Study.enqueue_trial queues, made as they are written (many to a journal write: one slow fsync each)
    add_trials(study, (_queued_trial(item, objective) for item in added), len(added))
    return added


def _queued_trial(item: Planned, objective: tuple[str, str]):
    attrs = {KEY: item.key, PHASE: item.phase, CONFIG: config_json(item.config), "optimizer": item.label,
             "problem": item.config.problem, "seed": item.config.seed, "device": item.config.device,
             "objective_metric": objective[0], "objective_direction": objective[1]}
    if item.round:
        attrs[ROUND] = item.round
    if item.space:
        attrs[SPACE] = {k: list(v) for k, v in item.space.items()}
        attrs[SLOT] = item.slot
    return create_trial(state=TrialState.WAITING, user_attrs=attrs,
                        system_attrs={"fixed_params": {} if item.space else {f"{item.label}.lr": item.config.lr}})


# what a queued trial carries (enqueue_missing), copied when a trial is queued again (requeue)
QUEUED_ATTRS = (KEY, PHASE, CONFIG, "optimizer", "problem", "seed", "device", "objective_metric",
                "objective_direction", SPACE, SLOT, ROUND)


def requeue(study, trial) -> bool:
    """Queue a finished (frozen) trial's configuration again, with its parameters (a search trial
    reruns its sampled values), unless a queued, running or finished trial has it already; returns
    whether it queued it. Call it under planning_lock, like enqueue_missing."""
    key = trial_key(trial.user_attrs)
    if any(trial_key(t.user_attrs) == key for t in study.get_trials(deepcopy=False, states=LIVE)):
        return False
    study.enqueue_trial(params=dict(trial.params),
                        user_attrs={name: trial.user_attrs[name] for name in QUEUED_ATTRS if name in trial.user_attrs})
    return True


class Queue:
    """The study's queue as one worker takes from it.

    One pass over the study's trials finds the waiting ones (lowest number first) and the
    configurations queued more than once; the worker then takes trials from that list, and reads
    the study again only once the list is used up. A pass per trial (Study.ask's way) made
    taking a trial and checking it for twins slower as the study grew (docs/performance.md).
    Taking stays atomic: WAITING -> RUNNING is a compare-and-set, and one that another worker won
    is skipped.
    """

    def __init__(self, spec: Spec, storage):
        # An RDB storage wrapped once in the trial cache that optuna.load_study would make afresh for
        # every trial: the trial taken must be in the cache its study writes through (set_trial_param
        # looks it up there), and this pass's read is what puts it there.
        self.spec, self.storage = spec, cached_storage(storage)
        self.study_id = storage.get_study_id_from_name(spec.name)
        self.waiting: collections.deque = collections.deque()
        self.waiting_attrs: dict = {}  # number -> user attrs of the waiting trials at the last pass
        self.twinned: set = set()  # keys of more than one live trial at the last pass: checked afresh

    def read(self) -> None:
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        self.waiting = collections.deque(sorted(t.number for t in trials if t.state == TrialState.WAITING))
        self.waiting_attrs = {t.number: t.user_attrs for t in trials if t.state == TrialState.WAITING}
        keys = collections.Counter(trial_key(t.user_attrs) for t in trials if t.state in LIVE)
        self.twinned = {key for key, count in keys.items() if count > 1}

    def take(self):
        """Take one queued trial atomically (as Study.ask does); (study, trial, trial_id) or None.

        Not Study.ask itself: on an empty queue it creates a new, unplanned trial.
        """
        for _ in range(2):  # what is left of the last pass, then a new pass
            while self.waiting:
                claimed = self._claim(self.waiting.popleft())
                if claimed is not None:
                    return claimed
            self.read()
        return None

    def take_siblings(self, attrs: dict, limit: int) -> list:
        """Up to `limit` more waiting trials of the configuration of `attrs` (a trial just taken) that
        differ from it only in their seed (the same label, phase and device; never a search trial,
        whose values are sampled when it runs), each taken atomically as `take` takes one: the
        seeds one worker trains stacked (spec.stack_seeds). [(study, trial, trial_id), ...]"""
        family = sibling_family(attrs)
        taken = []
        if family is None:
            return taken
        for number in list(self.waiting):
            if len(taken) >= limit:
                break
            if sibling_family(self.waiting_attrs.get(number, {})) != family:
                continue
            self.waiting.remove(number)
            try:
                claimed = self._claim(number)
            except BaseException as error:  # as in take: no trial stays RUNNING without a worker
                for _, _, other_id in taken:
                    fail_if_running(self.storage, other_id,
                                    f"{type(error).__name__} before the trial started; queued again on resume")
                raise
            if claimed is not None:
                taken.append(claimed)
        return taken

    def _claim(self, number: int):
        """Trial `number` set RUNNING for this worker unless another took it first: (study, trial,
        trial_id) or None. Its owner is marked at once (mark_owner). Interrupted before the trial
        runs, it is failed (queued again on resume)."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        try:
            if not self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return None
        except optuna.exceptions.UpdateFinishedTrialError:
            return None
        try:
            mark_owner(self.storage, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            return None  # failed meanwhile by a recovery that found it unmarked too long; it queued it again
        try:
            study = open_study(self.spec, self.storage, trial_number=number)  # its sampler sees every finished trial
            return study, trial_of(study, trial_id), trial_id
        except BaseException as error:  # Ctrl-C/SIGTERM between taking the trial and running it
            fail_if_running(self.storage, trial_id,
                            f"{type(error).__name__} before the trial started; queued again on resume")
            raise

    def duplicate_of(self, study, number: int, key: str, started) -> int | None:
        """duplicate_of, for a configuration queued more than once (the only way to have a twin)."""
        return duplicate_of(study, number, key, started) if key in self.twinned else None


def mark_owner(storage, trial_id: int) -> None:
    """Mark a trial just taken as this process's: pid, host, then a first heartbeat. A recovery tells
    a dead worker's trial from a live one's by them (trials.trial_is_dead); the heartbeat is written
    last, so a trial without one may have no owner on record (trials.unmarked_trials_are_dead)."""
    for name, value in (("pid", os.getpid()), ("host", socket.gethostname()), ("heartbeat", time.time())):
        storage.set_trial_user_attr(trial_id, name, value)


def sibling_family(attrs: dict) -> str | None:
    """What a queued trial shares with the other seeds of its configuration: its config less the
    seed, its label and phase (None for a search trial or one without a config)."""
    if attrs.get(SPACE) or CONFIG not in attrs:
        return None
    return json.dumps({"config": {**attrs[CONFIG], "seed": None}, "label": attrs.get("optimizer"),
                       "phase": attrs.get(PHASE)}, sort_keys=True, default=str)


def fail_trial(study, trial, why: str) -> None:
    """FAIL `trial`, which this worker runs, with `why`: what the sweep prints, the trial's error attr
    and check's listing (a driver's error can quote a store URI: passwords hidden)."""
    trial.set_user_attr(ERROR, hide_passwords(why)[:2000])
    study.tell(trial, state=TrialState.FAIL)


def fail_if_running(storage, trial_id: int, why: str) -> bool:
    """FAIL the trial `trial_id` with `why` if it is still RUNNING (one whose worker is gone, or was
    interrupted before it ran); whether it did (another process may have ended it meanwhile)."""
    try:
        if storage.get_trial(trial_id).state != TrialState.RUNNING:
            return False
        storage.set_trial_user_attr(trial_id, ERROR, hide_passwords(why)[:2000])
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        return True
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # it ended meanwhile


def duplicate_of(study, number: int, key: str, started) -> int | None:
    """Another trial of the same configuration that finished, or started first (a last safety net:
    the planning lock already queues each configuration once)."""
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        if trial_key(other.user_attrs) != key or other.number == number:
            continue
        if other.state != TrialState.RUNNING or (other.datetime_start, other.number) < (started, number):
            return other.number
    return None
