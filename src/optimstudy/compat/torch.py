"""torch internals the training loop relies on (diagnostics.py, workers.py)."""
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
