"""What `optimstudy sweep` prints besides its progress: the table of best configurations and
verdicts, and the plan of a --dry-run."""
import math
import numbers

from optimstudy.problems.registry import PROBLEMS
from optimstudy.sweep.planning import MAX_TRIALS_UNASKED, skip_notes
from optimstudy.sweep.spec import Spec


def format_table(summary: list[dict], verdicts: list[dict], spec: Spec, answers: list[dict] = ()) -> str:
    """Each optimizer's best configuration (results.summary_table rows), then the answer per problem
    and the decided verdicts."""
    lines = [f"{'problem':15} {'optimizer':12} {'best lr':>9}  {spec.metric}: mean ± std, 95% interval of the mean "
             "(seeds)"]
    for row in summary:
        if row.get("no_outcome"):  # no run ended with a value (all failed): not a divergence
            lines.append(f"{row['problem']:15} {row['optimizer']:12} {'-':>9}  {row['no_outcome']}")
            continue
        lr = f"{row['best_lr']:9.3g}" if is_finite_number(row["best_lr"]) else f"{'diverged':>9}"
        std = row["std"] if is_finite_number(row["std"]) else 0.0
        line = f"{row['problem']:15} {row['optimizer']:12} {lr}  "
        if is_finite_number(row["mean"]):
            line += f"{row['mean']:.4g} ± {std:.2g}"
            if is_finite_number(row["ci_low"]):
                line += (f", {'range ' if row.get('ci_kind') == 'range' else ''}"
                         f"[{row['ci_low']:.4g}, {row['ci_high']:.4g}]")
        line += f" (n={row['seeds']})"
        if row.get("optimizer_args"):
            line += f"  {row['optimizer_args']}"
        if row.get("setting"):
            line += f"  {row['setting']}"
        if is_finite_number(row.get("confirm_seeds")) and row["confirm_seeds"]:
            spread = row["confirm_std"] if is_finite_number(row["confirm_std"]) else 0.0
            line += (f"   confirmed on {int(row['confirm_seeds'])} new seeds: "
                     f"{row['confirm_mean']:.4g} ± {spread:.2g}")
        lines.append(line)
    for answer in answers:
        lines.append(f"ranking: {answer['problem']}: {answer['ranking']} ({answer['basis']})")
    decided = [v for v in verdicts if v["decided"]]
    for verdict in decided:
        lines.append(f"verdict: {verdict['problem']}: {verdict['a']} vs {verdict['b']}: {verdict['verdict']} "
                     f"({verdict['evidence']})")
    for outcome in ("no variation", "undecidable"):
        for problem in dict.fromkeys(v["problem"] for v in verdicts if v["outcome"] == outcome):
            found = [v for v in verdicts if v["problem"] == problem and v["outcome"] == outcome]
            pairs = ", ".join(f"{v['a']} vs {v['b']}" for v in found)
            lines.append(f"verdict: {problem}: {outcome} ({pairs}): {found[0]['evidence']}")
    if len(decided) < len(verdicts):
        lines.append(f"verdict: {len(verdicts) - len(decided)} of {len(verdicts)} optimizer pairs are not "
                     "decided with the seeds run (`optimstudy report` shows the seeds each would need)")
    return "\n".join(lines)


def is_finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)


def json_number(value):
    """JSON has no NaN: a missing number is null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def trial_numbers_text(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:8]))
    return f"trial{'s' if len(numbers) > 1 else ''} {shown}" + (" …" if len(numbers) > 8 else "")


LISTED_TRIALS = 200  # a dry run lists every trial of a plan up to this size; past it, a summary
FIRST_TRIALS = 10  # and the first of them


def print_dry_run(spec: Spec, planned, skipped: dict[str, int], counts: dict | None = None) -> None:
    """Every trial of `planned`; or, given `counts` (planning.plan_counts) of a plan over LISTED_TRIALS,
    its trials per problem and optimizer and the first FIRST_TRIALS of `planned` (an iterable)."""
    total = len(planned) if counts is None else sum(counts.values())
    print(f"sweep '{spec.name}' ({spec.path}): {total} trials, "
          f"{'search: ' + spec.search.sampler if spec.search else 'grid'}, budget {spec.budget}")
    if counts is not None:
        for (problem, label), count in counts.items():
            print(f"  {problem:15} {label:10} {count:,} trials")
        print(f"the first {FIRST_TRIALS} (of {total:,}; a plan of up to {LISTED_TRIALS} is listed in full):")
    for number, item in enumerate(planned):
        if counts is not None and number >= FIRST_TRIALS:
            break
        c = item.config
        lr = "sampled" if item.space else f"{c.lr:g}"
        extras = f"batch={c.batch_size} loss={c.loss or getattr(PROBLEMS.get(c.problem), 'default_loss', 'default')}"
        extras += ("" if c.zero_grad else " no-zero-grad") + (f" accumulate={c.accumulate}" if c.accumulate > 1 else "")
        gridded = [k for o in spec.optimizers if o.label == item.label for k in o.grid]  # the grid's other axes
        extras += "".join(f" {k}={c.opt[k]}" for k in gridded if k in c.opt)
        extras += "".join(f" {k}={c.schedule_args[k]}" for k in spec.schedule_grid if k in c.schedule_args)
        print(f"{number:4d} {item.phase:7} {c.problem:15} {item.label:10} lr={lr:9} seed={c.seed} "
              f"{c.device:6} {extras}")
    if counts is not None:
        print(f"… {total - FIRST_TRIALS:,} more")
    allowed = spec.max_trials or MAX_TRIALS_UNASKED
    if total > allowed:
        print(f"note: {total:,} trials are more than {'its max_trials' if spec.max_trials else 'a sweep runs unasked'} "
              f"({allowed:,}): running it needs max_trials = {total} in the spec")
    if spec.confirm_seeds:
        print(f"then: each optimizer's best configuration on {spec.confirm_seeds} new seeds")
    if spec.decide:
        print(f"then: new seeds in rounds of {spec.decide.seeds_per_round} for the pairs still open, up to "
              f"{spec.decide.max_seeds} per label"
              + (f" or {spec.decide.time_budget_s:g} s" if spec.decide.time_budget_s else ""))
    for line in skip_notes(skipped):
        print(f"note: {line}")
