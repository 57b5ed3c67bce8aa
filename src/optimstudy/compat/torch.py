"""torch internals the training loop relies on (diagnostics.py, workers.py) and a command's exit (cli.py)."""
import atexit
import logging
import sys

import torch

# Private: `torch._foreach_*`, the fused list ops torch.optim's own foreach paths are built on: one
# op (one kernel on CUDA) for a whole list of tensors where the public API needs one per tensor
# (diagnostics.py measures each step with them). If torch renames one: an AttributeError as
# diagnostics.py is imported, so no run starts; tests/compat/test_compat.py fails first.
foreach_norm = torch._foreach_norm  # [||t|| for t in tensors]
foreach_copy_ = torch._foreach_copy_  # each of the first list := its tensor of the second
foreach_sub_ = torch._foreach_sub_  # each of the first list -= its tensor of the second


def import_dynamo():
    """Import `torch._dynamo` now, in a process about to fork workers, so each starts with it.

    Private: torch's compiler module. Every torch optimizer imports it the first time it steps
    (a slow import, in every process); no public API loads it ahead. If it moves: an ImportError
    as a sweep forks its workers; tests/compat/test_compat.py fails first."""
    import torch._dynamo  # only when asked: the import is what this function is for

    return torch._dynamo


def drop_unheard_compile_report() -> None:
    """Unregister torch._dynamo's exit handler where the log it writes would show nothing.

    Private: `torch._dynamo.utils.dump_compile_times`, which dynamo registers with atexit as it is
    imported (by the first optimizer built): at exit it imports `tabulate` to build a table of
    compile times, then logs it at INFO, which its logger drops unless TORCH_LOGS or the logging
    set-up asks for it (docs/performance.md: what that exit cost). If it goes: an AttributeError
    as a command exits, after its work is done; tests/compat/test_compat.py fails first."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is not None and not utils.log.isEnabledFor(logging.INFO):
        atexit.unregister(utils.dump_compile_times)
