"""The analysis scripts: which folder, which of its files are figure scripts, and loading them.

    folder = analysis_folder()          # or analysis_folder("my_plots/")
    scripts = load_scripts(folder)      # [(Section, figure function or None)], in page order

Which scripts: --analysis DIR's alone when given; else the built-in ones, shipped inside the
package (optimstudy/report/figures/, so a wheel draws them too), with ./analysis's figure scripts
added, each replacing a built-in one of the same file name (folder.note says what it added and
replaced, or why ./analysis was passed over). A figure script is a *.py with a top-level `figure`
function, found by parsing it, not running it: a folder named analysis/ may hold a user's other
scripts, whose top-level code must never run here.
"""
import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from optimstudy.errors import UsageError

# The built-in figure scripts: package data (no __init__.py: they are scripts, loaded by path and
# run alone, not modules of the package; `python -m optimstudy.report.figures.NAME` runs one)
BUILT_IN = Path(__file__).resolve().parent / "figures"
DEFAULT_ORDER = 100


@dataclass
class Section:
    name: str  # the script's file stem; the figure is figures/<name>.png
    title: str
    spec: str  # the experiment spec whose sweep fills it
    order: int = DEFAULT_ORDER
    caption: str = ""
    run_ids: tuple = ()
    note: str = ""  # why it is missing or partly empty
    error: str = ""
    table: str = ""  # HTML of a table the script returned with its figure
    metrics: tuple | None = None  # the per-step metrics the script reads (METRICS); None: all
    # no data for it in the runs reported: the script drew nothing, or drew from no run and said what it needs;
    # the page lists it at its end, with the command that fills it, instead of numbering it
    no_data: bool = False

    @property
    def command(self) -> str:
        """The command that fills it, `optimstudy sweep SPEC`; "" when its script names no SPEC."""
        return f"optimstudy sweep {self.spec}" if self.spec else ""


# ---- the analysis scripts ---------------------------------------------------------------------

@dataclass(frozen=True)
class AnalysisFolder:
    path: Path
    scripts: tuple  # the figure scripts, by path
    skipped: tuple = ()  # (file name, why) of the *.py that are not figure scripts: never run
    note: str = ""  # why this folder and not ./analysis


def figure_scripts(folder: Path) -> tuple[tuple, tuple]:
    """(figure scripts, (name, why) of the other *.py) in `folder`, read without running any of them."""
    scripts, skipped = [], []
    for path in sorted(Path(folder).glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError) as error:  # ValueError: a NUL byte; a binary file named .py
            skipped.append((path.name, f"does not parse: {type(error).__name__}: {error}"))
            continue
        except OSError as error:
            skipped.append((path.name, f"cannot be read: {error.strerror}"))
            continue
        if any(_binds_figure(node) for node in tree.body):
            scripts.append(path)
        else:
            skipped.append((path.name, "no top-level figure(study) function"))
    return tuple(scripts), tuple(skipped)


def _binds_figure(node) -> bool:
    """`def figure(...)`, `figure = ...` or `from x import figure` at a module's top level."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name == "figure"
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Name) and t.id == "figure" for t in targets)
    if isinstance(node, ast.ImportFrom):
        return any((alias.asname or alias.name) == "figure" for alias in node.names)
    return False


def analysis_folder(analysis=None) -> AnalysisFolder:
    """The folder of analysis scripts (the rule: the module docstring)."""
    if analysis is not None:
        scripts, skipped = figure_scripts(Path(analysis)) if Path(analysis).is_dir() else ((), ())
        if not scripts:
            found = f" (its *.py: {'; '.join(f'{name}: {why}' for name, why in skipped[:3])})" if skipped else ""
            raise UsageError(f"--analysis '{analysis}' holds no analysis scripts: no *.py with a top-level "
                             f"figure(study) function{found}; see analysis/README.md for how to write one")
        return AnalysisFolder(Path(analysis), scripts, skipped)
    local = Path("analysis")
    built_in, built_in_skipped = figure_scripts(BUILT_IN) if BUILT_IN.is_dir() else ((), ())
    scripts, skipped = figure_scripts(local) if local.is_dir() and local.resolve() != BUILT_IN else ((), ())
    if not built_in and not scripts:
        raise UsageError(f"no analysis scripts: ./analysis/ holds no *.py with a figure(study) function and this "
                         f"installation's built-in figure scripts are missing ({BUILT_IN}); reinstall optimstudy, "
                         "or pass --analysis DIR (see analysis/README.md in the optimstudy repository)")
    if not scripts:
        note = ""
        if skipped:  # no *.py at all (the report's own output): silent
            names = ", ".join(name for name, _ in skipped[:5]) + (", …" if len(skipped) > 5 else "")
            note = (f"./analysis holds no figure scripts ({len(skipped)} *.py without a top-level figure(study) "
                    f"function, not run: {names}): drew the built-in figures from {BUILT_IN}; pass "
                    "--analysis DIR for another folder")
        return AnalysisFolder(BUILT_IN, built_in, built_in_skipped, note)
    mine = {path.name for path in scripts}
    replaced = sorted(path.stem for path in built_in if path.name in mine)
    merged = sorted([path for path in built_in if path.name not in mine] + list(scripts), key=lambda path: path.name)
    note = (f"./analysis adds {len(scripts) - len(replaced)} figure script(s) to the built-in ones"
            + (f" and replaces the built-in {', '.join(replaced)}" if replaced else ""))
    return AnalysisFolder(local, tuple(merged), skipped, note)


def load_scripts(folder) -> list:
    """(Section, figure function or None) per figure script of `folder` (a path or an AnalysisFolder),
    in page order (ORDER, then name). A script that fails to import becomes a section with its error."""
    paths = folder.scripts if isinstance(folder, AnalysisFolder) else figure_scripts(Path(folder))[0]
    loaded = []
    for path in paths:
        section = Section(path.stem, path.stem.replace("_", " "), "")
        try:
            spec = importlib.util.spec_from_file_location(f"optimstudy_analysis_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            function = module.figure
            section.title = getattr(module, "TITLE", section.title)
            section.spec = getattr(module, "SPEC", "")
            section.order = int(getattr(module, "ORDER", DEFAULT_ORDER))
            section.metrics = tuple(module.METRICS) if hasattr(module, "METRICS") else None
        except Exception as error:  # noqa: BLE001  a broken script costs its own section, not the page
            section.error = f"{path.name} did not load: {type(error).__name__}: {error}"
            function = None
        loaded.append((section, function))
    return sorted(loaded, key=lambda item: (item[0].order, item[0].name))
