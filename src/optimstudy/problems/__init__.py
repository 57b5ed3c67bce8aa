"""The extension points: problems (data, model, loss, target), optimizers, losses, schedules and
parameter groups, each a plain-dict registry that also takes `package.module:name`.

    from optimstudy.problems import Problem      # a user's own problem (see README "Your own pieces")
"""
from optimstudy.problems.data import Data, DataInfo, Split, load_problem_data
from optimstudy.problems.registry import PROBLEMS, Problem, resolve_problem

__all__ = ["Data", "DataInfo", "PROBLEMS", "Problem", "Split", "load_problem_data", "resolve_problem"]
