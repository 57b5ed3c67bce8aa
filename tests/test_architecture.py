"""The package's layering (pyproject.toml [tool.importlinter]), checked with import-linter on the
real source, and once on a copy with one forbidden import added, so that the check is seen to fail;
the same for ruff ([tool.ruff]) over everything we wrote."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
RUFF = Path(sys.executable).with_name("ruff")
LINTED = ["src", "tests", "benchmarks", "analysis", "examples", "experiments"]


def lint(source_root: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), str(config), "--no-cache"], capture_output=True, text=True,
                          cwd=source_root, env={"PYTHONPATH": str(source_root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_layering_contracts_hold():
    done = lint(REPO / "src", REPO / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "3 kept" in done.stdout


def test_a_results_module_importing_the_training_loop_breaks_them(tmp_path):
    shutil.copytree(REPO / "src" / "optimstudy", tmp_path / "optimstudy", ignore=shutil.ignore_patterns("__pycache__"))
    tables = tmp_path / "optimstudy" / "results" / "tables.py"
    tables.write_text(tables.read_text() + "\n\ndef _late():\n    from optimstudy.run.training import train  # noqa\n")
    done = lint(tmp_path, REPO / "pyproject.toml")
    assert done.returncode != 0
    assert "optimstudy.results.tables -> optimstudy.run.training" in done.stdout
    broken = done.stdout.split("Broken contracts")[-1]
    assert "layers: each package imports only the ones below it" in broken
    assert "the results side never imports the run side or torch" in broken


def ruff(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUFF), "check", "--no-cache", "--output-format", "concise", *LINTED], cwd=folder,
                          capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    done = ruff(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_ruff_finds_an_unused_import_and_a_long_line(tmp_path):
    for name in [*LINTED, "pyproject.toml"]:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(
            REPO / name, tmp_path / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    tables = tmp_path / "src" / "optimstudy" / "results" / "tables.py"
    tables.write_text(tables.read_text() + "\n\ndef _late():\n    import json\n    return '" + "x" * 120 + "'\n")
    done = ruff(tmp_path)
    assert done.returncode == 1
    assert "tables.py" in done.stdout and "F401" in done.stdout and "E501" in done.stdout


FIGURES = REPO / "src" / "optimstudy" / "report" / "figures"


def function_level_imports_without_a_reason() -> list[str]:
    """Imports inside functions with no comment on their line or the line above: each one delays a
    cost (torch, MLflow, Optuna, pandas: docs/design.md) and says so, or it belongs at the top."""
    found = []
    for path in sorted((REPO / "src" / "optimstudy").rglob("*.py")):
        if path.parent == FIGURES:  # scripts shipped as package data, not modules: their `__main__` import
            continue                # is how each runs alone (the public-API check below reads them)
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset > 0:
                said = "#" in lines[node.end_lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
                if not said:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_every_function_level_import_says_why():
    assert function_level_imports_without_a_reason() == []


# What a user's problem module, the examples and the analysis scripts may import: the public API
# (optimstudy's own names), the results package, the figure style, the problem facts, and the
# entry point that runs one figure script alone.
PUBLIC = ("optimstudy", "optimstudy.problems", "optimstudy.results", "optimstudy.results.aggregates",
          "optimstudy.results.comparison", "optimstudy.report.plotting", "optimstudy.facts", "optimstudy.cli")


def test_examples_and_analysis_scripts_use_only_the_public_api():
    imported = {}
    for path in [*sorted((REPO / "src" / "optimstudy" / "report" / "figures").glob("*.py")),
                 *sorted((REPO / "examples").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optimstudy"):
                for alias in node.names:  # `from optimstudy.report import plotting` is the module itself
                    module = f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in PUBLIC else node.module
                    imported.setdefault(module, []).append(path.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("optimstudy"):
                        imported.setdefault(alias.name, []).append(path.name)
    assert "optimstudy" in imported and "optimstudy.report.plotting" in imported  # the scan saw them
    assert {module: files for module, files in imported.items() if module not in PUBLIC} == {}
