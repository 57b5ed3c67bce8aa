"""Objects by import path, `package.module:name`: how users extend optimstudy without forking it.

The current working directory is importable, as it is for `python -m`, so a file
`./myproblems.py` is `--problem myproblems:wide_mlp` from the `optimstudy` script too, and
in every sweep worker process (each imports the path again; nothing is registered at run time).

    import_object("torch.optim:Adam", "optimizer", "a torch.optim.Optimizer subclass")

One helper for every kind of path (problems/optimizers.py, registry.py, schedules.py and facts.py use it): import
paths for anything new should go through it too, so that all resolve the same way.
"""
import importlib
import inspect
import os
import sys

from optimstudy.errors import UsageError


def is_import_path(name: str) -> bool:
    module, sep, attribute = str(name).partition(":")
    return bool(sep and module and attribute)


def import_object(path: str, kind: str, expected: str):
    """The object `path` names; a UsageError naming the path, the reason and what is expected."""
    if not is_import_path(path):
        raise UsageError(f"{kind} '{path}' is not an import path; expected 'package.module:name' naming {expected}")
    module_name, _, attribute = path.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # after the installed packages: a local file never shadows a library
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"{kind} '{path}' cannot be imported: {error} (searched the current folder {cwd} and "
                         f"the installed packages); expected 'package.module:name' naming {expected}") from None
    except Exception as error:  # noqa: BLE001  the user's module itself fails while importing
        raise UsageError(f"{kind} '{path}': importing module '{module_name}' failed: "
                         f"{type(error).__name__}: {error}") from None
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise UsageError(f"{kind} '{path}': module '{module_name}' has no attribute '{attribute}' "
                             f"(it has: {', '.join(names[:20])}); expected {expected}")
        obj = getattr(obj, part)
    return obj


def import_made(path: str, kind: str, expected: str, is_made) -> object:
    """The object `path` names, or what it makes: a function with no arguments (`module:make_problem`)
    is called when `is_made` says the object itself is not the thing wanted."""
    found = import_object(path, kind, expected)
    if not is_made(found) and callable(found) and not takes_an_argument(found):
        try:
            found = found()
        except UsageError as error:
            raise UsageError(f"{kind} '{path}': {error}") from None
    return found


def takes_an_argument(factory) -> bool:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: call it bare
        return False
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
    return bool(positional)
