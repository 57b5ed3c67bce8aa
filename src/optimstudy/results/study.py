"""A study's results: the tidy frame and every number derived from it, each computed once."""
from functools import cached_property

import numpy as np
import pandas as pd

from optimstudy.facts import problem_facts
from optimstudy.results import aggregates
from optimstudy.results.rankings import answers, verdicts
from optimstudy.results.sequential import sequential_designs
from optimstudy.results.summary import summary_table, time_to_target
from optimstudy.results.tables import HUGE, best_configurations, main_configurations, run_table


class Study:
    """The tidy frame and every result derived from it, each computed on first use.

    What an analysis script receives: study.frame, study.runs, study.best, study.main,
    study.summary, study.verdicts, study.answers, study.across, study.facts, study.points(run_ids, metrics).
    """

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    @cached_property
    def runs(self) -> pd.DataFrame:
        return run_table(self.frame)

    @cached_property
    def facts(self) -> dict:
        """problem name -> ProblemFacts (task, default loss, target, known optimum)."""
        return problem_facts(self.runs)

    @cached_property
    def best(self) -> pd.DataFrame:
        return best_configurations(self.runs)

    @cached_property
    def main(self) -> pd.DataFrame:
        return main_configurations(self.best, self.runs)

    @cached_property
    def reach(self) -> pd.DataFrame:
        return time_to_target(self)

    @cached_property
    def summary(self) -> pd.DataFrame:
        return summary_table(self)

    @cached_property
    def horizons(self) -> dict:
        """experiment -> max_seeds of its sequential design (a sweep run with [decide] or --until-decided)."""
        return sequential_designs(self.frame)

    @cached_property
    def verdicts(self) -> pd.DataFrame:
        return verdicts(self.runs, self.best, self.horizons)

    @cached_property
    def answers(self) -> pd.DataFrame:
        return answers(self.best, self.verdicts)

    @cached_property
    def across(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(interquartile means, probabilities of improvement) over the problems of the plain comparison
        (study.main): aggregates.across_problems."""
        return aggregates.across_problems(self.main)

    @cached_property
    def _slices(self) -> dict | None:
        """run_id -> the slice of rows holding its points (tracking.reader.load_runs sorts by run, metric, step)."""
        codes, names = pd.factorize(self.frame["run_id"])  # categorical (store's compact frame): its codes
        if not len(codes):
            return {}
        cuts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        bounds = np.concatenate([[0], cuts, [len(codes)]])
        slices = {str(names[codes[a]]): slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])}
        return slices if len(slices) == len(bounds) - 1 else None

    def points(self, run_ids, metrics) -> pd.DataFrame:
        """The (run_id, step, metric, value) points of some runs; MLflow's +-1.8e308 are +-inf."""
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        run_ids = [str(r) for r in dict.fromkeys(run_ids)]
        index, frame = self._slices, self.frame
        if index is None:
            chosen = frame[frame["run_id"].astype(str).isin(run_ids)]
            chosen = chosen.loc[chosen["metric"].isin(metrics), ["run_id", "step", "metric", "value"]]
        else:  # positions, not frames: one take of four columns instead of a concat of 38 per run
            spans = [index[r] for r in run_ids if r in index]
            rows = np.concatenate([np.arange(s.start, s.stop) for s in spans]) if spans else np.array([], dtype=int)
            metric = frame["metric"]
            if isinstance(metric.dtype, pd.CategoricalDtype):
                wanted = np.flatnonzero(metric.cat.categories.isin(metrics))
                rows = rows[np.isin(metric.cat.codes.to_numpy()[rows], wanted)]
            else:
                rows = rows[metric.iloc[rows].isin(metrics).to_numpy()]
            chosen = frame[["run_id", "step", "metric", "value"]].iloc[rows]
        chosen = chosen.astype({"run_id": str, "metric": str})
        huge = chosen["value"].abs() >= HUGE
        return chosen.assign(value=chosen["value"].where(~huge, np.inf * np.sign(chosen["value"]))).reset_index(
            drop=True)
