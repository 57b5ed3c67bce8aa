"""Which logged metric may rank runs (a sweep's objective), its direction, and where it is measured.

Pure Python, so the report (no torch) and the spec check agree on one list:

    from optimstudy.results.objectives import final_metric_names, default_direction
    final_metric_names("binary", has_optimum=False, has_validation=True)
    # ('train_loss', 'train_accuracy', 'train_error_rate', 'val_loss', ..., 'test_error_rate')
    default_direction("val_error_rate")   # 'minimize'

A run logs each of these once, at its end, as final_<name> (training.final_metrics), over whole
splits. Any of them may be the objective; a test_* one leaks: picking the best configuration by
the test split makes the test split part of tuning, so its number no longer estimates new data.
"""
SPLITS = ("train", "val", "test")
MEASURES = {  # per task, what evaluate() measures on a split
    "classification": ("loss", "accuracy"),
    "binary": ("loss", "accuracy", "error_rate"),  # labels ±1
    "regression": ("loss",),
}
OPTIMUM_METRICS = ("excess_loss",)  # problems with a known optimum: training MSE above it
# every final metric any problem can log (what the report loads)
FINAL_METRICS = tuple(dict.fromkeys(
    [f"final_{split}_{measure}" for measures in MEASURES.values() for split in SPLITS for measure in measures]
    + [f"final_{name}" for name in OPTIMUM_METRICS]))


def final_metric_names(task: str, has_optimum: bool, has_validation: bool) -> tuple:
    """The metrics a run of such a problem logs at its end (as final_<name>): what may rank it."""
    splits = [s for s in SPLITS if s != "val" or has_validation]
    names = [f"{split}_{measure}" for split in splits for measure in MEASURES[task]]
    return tuple(names + (list(OPTIMUM_METRICS) if has_optimum else []))


def default_direction(metric: str) -> str:
    return "maximize" if metric.endswith("accuracy") else "minimize"


def evaluation_metric(metric: str, has_validation: bool) -> str | None:
    """The objective's name at each evaluation (what a pruner sees), or None when evaluations do not
    measure it: they run on the validation split, or on the whole training split when there is none
    (logged as train_full_*); the test split and excess_loss are measured only at the end."""
    split, _, measure = metric.partition("_")
    if split == "val" and has_validation:
        return metric
    if split == "train" and not has_validation:
        return f"train_full_{measure}"
    return None


def selection_warning(metric: str) -> str:
    """'' unless the objective is measured on the test split, which should only report."""
    if not str(metric).startswith("test_"):
        return ""
    return (f"the objective {metric} is measured on the test split: choosing the best configuration by it "
            "leaks the test data into tuning, so the test numbers are no longer an honest estimate; rank by "
            "a val_* metric and let the test split only report")
