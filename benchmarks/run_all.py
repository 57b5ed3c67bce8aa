"""Run every benchmark, each in a fresh process, and print one table: comparison, measured, target, met?

    python benchmarks/run_all.py            # the full set: under 10 minutes on 2 cores
    python benchmarks/run_all.py --quick    # a smoke run of a minute or two (results/quick/)
    python benchmarks/run_all.py --only tracking workers
    python benchmarks/run_all.py --render   # no benchmark: rewrite the two pages from results/latest.json

Every benchmarks/bench_<name>.py is run (the known ones first, in ORDER; one a helper adds
joins at the end), each writing results/<name>.json with rows {name, measured, target, met}.
Writes results/latest.json (all of them), results/README-table.md (the table, with the
date, the machine and a closing note saying which numbers are CPU-only) and, for a full
(not --quick) run, docs/performance.md: benchmarks/performance_intro.md with the table in
place of its TABLE_MARKER line.
A target that is not met is a result, not a failure: the exit status is non-zero only
when a benchmark could not run.
"""
import argparse
import json
import subprocess
import sys
import time

from common import BENCH_DIR, QUICK_RESULTS_DIR, REPO, RESULTS_DIR, load_average, machine

# the rest follow, by name
ORDER = ("pipeline", "floor", "fullbatch", "tracking", "startup", "workers", "gpu", "memory", "scale")
BENCHMARKS = tuple(sorted((p.stem[len("bench_"):] for p in BENCH_DIR.glob("bench_*.py")),
                          key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name)))
TIMEOUT_S = 600
PERFORMANCE_PAGE = REPO / "docs" / "performance.md"
PERFORMANCE_INTRO = BENCH_DIR / "performance_intro.md"  # the page's fixed text around the table
TABLE_MARKER = "<!-- the table from benchmarks/results/README-table.md goes here -->"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="benchmarks/run_all.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps and repeats (results/quick/)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--threads", type=int, help="torch threads on both sides (default: optimstudy's)")
    parser.add_argument("--data-dir", help="MNIST root (default: $OPTIMSTUDY_DATA_DIR)")
    parser.add_argument("--note", help="a line for the table's caption, e.g. 'quiet machine, nothing else running' "
                                       "(kept in latest.json, so --render repeats it)")
    parser.add_argument("--render", action="store_true",
                        help="run no benchmark: rewrite README-table.md and docs/performance.md from "
                             "results/latest.json (results/quick/ with --quick)")
    args = parser.parse_args(argv)
    if args.render and args.only:
        parser.error("--render runs no benchmark; it takes no --only")
    return args


def run_one(name: str, args) -> tuple[dict | None, float, str | None]:
    """(result, seconds, error) of benchmarks/bench_<name>.py in a fresh process."""
    command = [sys.executable, str(BENCH_DIR / f"bench_{name}.py")]
    command += ["--quick"] if args.quick else []
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    print(f"\n=== {name} ===", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - started, f"timed out after {TIMEOUT_S} s"
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return None, seconds, f"exited with status {done.returncode}"
    path = (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text()), seconds, None


def table_rows(results: dict, errors: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for name in results | errors:
        if name in errors:
            rows.append((f"{name}: could not run", errors[name], "", "error"))
            continue
        for row in results[name]["comparisons"]:
            met = {True: "yes", False: "**no**", None: "–"}[row["met"]]
            rows.append((row["name"], row["measured_text"], row["target_text"], met))
    return rows


def markdown(rows, info: dict, total_s: float, args, results: dict, earlier: dict, after: list | None) -> str:
    cores = f"{info['cores']} core{'s' if info['cores'] != 1 else ''}"
    gpus = ", ".join(info["gpus"]) or "no GPU"
    load = info["load_average_1_5_15"]
    caption = (f"Measured {info['date'][:10]} on {info['cpu']} ({cores}, {info['memory_gb']} GB, {gpus}), "
               f"Python {info['python']}, torch {info['torch']}, MLflow {info['mlflow']}, Optuna {info['optuna']}, "
               f"optimstudy {info['optimstudy']} ({info['git']}). "
               f"{'Quick smoke run' if args.quick else 'Full run'}: `python benchmarks/run_all.py"
               f"{' --quick' if args.quick else ''}{' --only ' + ' '.join(args.only) if args.only else ''}` "
               f"took {total_s / 60:.1f} min; "
               f"load average at the start {load[0] if load else '?'}.")
    lines = ["<!-- written by benchmarks/run_all.py; regenerate it rather than edit it -->", "", caption]
    if args.note:
        lines += ["", args.note]
    lines += ["", "| comparison | measured | target | met? |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows]
    if earlier:
        lines += ["", "Rows from earlier runs (`--only` left them as they were): " + ", ".join(
            f"{name} ({result['machine']['date'][:16].replace('T', ' ')}, {result['mode']}, {result['machine']['cpu']})"
            for name, result in earlier.items()) + "."]
    lines += ["", closing_note(results, info, after)]
    return "\n".join(lines) + "\n"


def closing_note(results: dict, info: dict, after: list | None) -> str:
    """Which numbers are CPU-only, and how loaded the machine was (ratios are medians of interleaved runs);
    `after`: the load average when the run ended."""
    gpu = results.get("gpu", {}).get("measurements", {})
    if gpu.get("device_lent") is False or not info["gpus"]:
        where = (f"No GPU was lent to this run ({gpu.get('skipped', 'no CUDA device')}): the GPU rows are skipped "
                 "and every number above was measured on the CPU.")
    else:
        where = f"GPU rows on {', '.join(info['gpus'])}; every other row on the CPU."
    return (f"{where} Each ratio is the ratio of medians of interleaved repeats, measured side by side in one "
            f"process; load average {info['load_average_1_5_15'][0] if info['load_average_1_5_15'] else '?'} "
            f"at the start and {after[0] if after else '?'} at the end (on {info['cores']} cores).")


def print_table(rows) -> None:
    widths = [max(len(row[i]) for row in rows + [("comparison", "measured", "target", "met?")]) for i in range(4)]
    widths[0] = min(widths[0], 90)
    header = ("comparison", "measured", "target", "met?")
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(cell[:widths[i]].ljust(widths[i]) if i == 0 else cell.ljust(widths[i])
                        for i, cell in enumerate(row)).rstrip())


def performance_page(table: str) -> str:
    """docs/performance.md: the fixed text of performance_intro.md with the table in place of TABLE_MARKER."""
    intro = PERFORMANCE_INTRO.read_text()
    if TABLE_MARKER not in intro:
        raise SystemExit(f"{PERFORMANCE_INTRO} has no line {TABLE_MARKER!r} to put the table at")
    head, tail = intro.split(TABLE_MARKER, 1)
    table = table.replace("<!-- written by benchmarks/run_all.py; regenerate it rather than edit it -->\n\n", "")
    return ("<!-- written by benchmarks/run_all.py from benchmarks/performance_intro.md and "
            "benchmarks/results/latest.json; edit those, then run `python benchmarks/run_all.py --render` -->\n\n"
            + head + table.rstrip("\n") + tail)


def write_pages(folder, latest: dict, quick: bool) -> list:
    """README-table.md (and docs/performance.md for a full run) from latest.json's contents. The caption
    describes the invocation that wrote it (its seconds_per_benchmark: the benchmarks it ran, in order);
    the other benchmarks' rows are dated as earlier."""
    errors = latest.get("errors", {})
    invoked = list(latest.get("seconds_per_benchmark", {}))
    everything = set(BENCHMARKS) | set(latest["benchmarks"])
    args = argparse.Namespace(quick=quick, note=latest.get("note"),
                              only=None if set(invoked) >= everything else invoked)
    earlier = {name: result for name, result in latest["benchmarks"].items() if name not in invoked}
    ordered = sorted(latest["benchmarks"],
                     key=lambda name: BENCHMARKS.index(name) if name in BENCHMARKS else len(BENCHMARKS))
    table = table_rows({name: latest["benchmarks"][name] for name in ordered}, errors)
    text = markdown(table, latest["machine"], latest["total_s"], args, latest["benchmarks"], earlier,
                    latest.get("load_average_after"))
    (folder / "README-table.md").write_text(text)
    written = [folder / "README-table.md"]
    if not quick:  # a smoke run's numbers never reach the docs
        PERFORMANCE_PAGE.parent.mkdir(parents=True, exist_ok=True)
        PERFORMANCE_PAGE.write_text(performance_page(text))
        written.append(PERFORMANCE_PAGE)
    return written


def render(args) -> int:
    """--render: the two pages again from results/latest.json, running no benchmark."""
    folder = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    path = folder / "latest.json"
    if not path.exists():
        print(f"error: {path} does not exist: run the benchmarks first (python benchmarks/run_all.py)",
              file=sys.stderr)
        return 2
    latest = json.loads(path.read_text())
    if args.note is not None:
        latest["note"] = args.note
    written = write_pages(folder, latest, args.quick)
    print("wrote " + " and ".join(str(p) for p in written))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args)
    started = time.perf_counter()
    info = machine()
    results, errors, seconds = {}, {}, {}
    for name in args.only or BENCHMARKS:
        result, seconds[name], error = run_one(name, args)
        if error:
            errors[name] = error
        else:
            results[name] = result
    total_s = time.perf_counter() - started

    rows = table_rows(results, errors)
    folder = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    latest = {"updated": info["date"], "mode": "quick" if args.quick else "full", "machine": info,
              "load_average_after": load_average(), "total_s": round(total_s, 1),
              "seconds_per_benchmark": {k: round(v, 1) for k, v in seconds.items()},
              "errors": errors, "note": args.note, "benchmarks": results}
    if args.only:  # keep the other benchmarks' last results
        previous = folder / "latest.json"
        if previous.exists():
            latest["benchmarks"] = {**json.loads(previous.read_text()).get("benchmarks", {}), **results}
    (folder / "latest.json").write_text(json.dumps(latest, indent=2, ensure_ascii=False) + "\n")
    # the table holds every benchmark: with --only, the others' rows from their last run, dated
    written = write_pages(folder, latest, args.quick)

    print(f"\n=== all benchmarks ({latest['mode']}, {total_s / 60:.1f} min; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ") ===")
    print_table(rows)
    print("\n" + closing_note(latest["benchmarks"], info, latest["load_average_after"]))
    print(f"\nwrote {folder / 'latest.json'}, " + " and ".join(str(p) for p in written))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
