"""Every MLflow tag optimstudy writes, and the run-table column each becomes when read back.

One vocabulary for the writers (run/runner.py, sweep/, tracking/) and the reader (tracking/reader.py).
The names are the stored format: renaming one orphans the tags of every store written before.
"""

# on every run optimstudy starts
TAG_KIND = "optimstudy.kind"  # "run", "trial" or "sweep" (a sweep's parent run)
TAG_VERSION = "optimstudy.version"
TAG_ERROR = "optimstudy.error"  # why a run FAILED or was KILLED, in one line
TAG_BATCH_NOTE = "optimstudy.batch_note"  # a batch size changed to fit the data, and why
TAG_STACKED = "optimstudy.stacked_seeds"  # on each stacked seed's run: the seeds it trained with, e.g. "0,1,2"

# the problem's facts, so that a report knows them without importing torch
TAG_TASK = "optimstudy.problem.task"
TAG_DEFAULT_LOSS = "optimstudy.problem.default_loss"
TAG_TARGET = "optimstudy.problem.target"
TAG_HAS_OPTIMUM = "optimstudy.problem.has_optimum"
TAG_QUADRATIC = "optimstudy.problem.quadratic"

# on a sweep's trial runs
TAG_STUDY = "optimstudy.study"
TAG_TRIAL = "optimstudy.trial"
TAG_PHASE = "optimstudy.phase"  # "tune", "confirm" or "decide"
TAG_ROUND = "optimstudy.round"  # a decide-phase trial's round of added seeds
TAG_OPTIMIZER_LABEL = "optimstudy.optimizer_label"
TAG_OBJECTIVE_METRIC = "optimstudy.objective_metric"
TAG_OBJECTIVE_DIRECTION = "optimstudy.objective_direction"
TAG_LR_SPACE = "optimstudy.lr_space"  # [low, high, log] of a sampled learning rate
TAG_PRUNED = "optimstudy.pruned"

# on a sweep's parent run
TAG_SPEC = "optimstudy.spec"  # the spec file's path
TAG_PID = "optimstudy.pid"  # the sweep's process, for `optimstudy check`
TAG_EXTENSIONS = "optimstudy.extensions"  # a JSON list of the times the spec was extended
TAG_EDGE_WARNINGS = "optimstudy.edge_warnings"  # a JSON list: best learning rates at the searched range's edge
TAG_DECIDE = "optimstudy.decide"  # the sequential design of seeds added until decided: {"max_seeds": N, ...}

# on an experiment
TAG_DESCRIPTION = "optimstudy.description"  # the note optimstudy wrote, to tell it from one a user edited

NOTE_TAG = "mlflow.note.content"  # MLflow's own: the Markdown its UI shows on a run or experiment

PROBLEM_COLUMNS = {TAG_TASK: "problem_task", TAG_DEFAULT_LOSS: "problem_default_loss", TAG_TARGET: "problem_target",
                   TAG_HAS_OPTIMUM: "problem_has_optimum", TAG_QUADRATIC: "problem_quadratic"}
# tag -> column of tracking.reader.load_runs's table
RUN_TAG_COLUMNS = {"mlflow.parentRunId": "parent_run_id", "mlflow.runName": "run_name", TAG_STUDY: "study",
                   TAG_TRIAL: "trial", TAG_KIND: "kind", TAG_PHASE: "phase", TAG_OPTIMIZER_LABEL: "optimizer_label",
                   TAG_OBJECTIVE_METRIC: "objective_metric", TAG_OBJECTIVE_DIRECTION: "objective_direction",
                   TAG_LR_SPACE: "lr_space", "device.name": "device_name", "dataset": "dataset", TAG_ERROR: "error",
                   "host": "host", TAG_PID: "pid", TAG_ROUND: "round", **PROBLEM_COLUMNS}
