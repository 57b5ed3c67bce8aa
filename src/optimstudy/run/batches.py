"""How the loop draws minibatches (`Batches`) and how many steps an epoch is."""
import math

import torch

from optimstudy.problems.data import Split


class Batches:
    """Minibatches by index: the rows in a fresh seeded order each epoch (or in order), full batches only.

    Dropping the short last batch keeps every step the same size, which is what makes
    gradient accumulation over K batches equal to one batch K times larger. A batch larger
    than the split is the whole split: full-batch training.

    A whole-split batch is the split's own tensors, not a gathered copy (the copy was 56% of a
    full-batch step on a 400 x 3,000 problem). Only the row order differs from a shuffled copy,
    and nothing that trains depends on it: every loss in losses.LOSSES is a mean over the rows,
    so the gradient is the same up to float summation order (tests/run/test_training.py checks the
    curves); accumulated micro-batches of a whole split are each the whole split either way; a
    random layer (dropout) draws the same masks, only on rows in the data's order, which is
    the same distribution. The model must not change its input in place, as evaluate() already
    assumes (it passes slices of the split). The order generator is this object's own, so not
    drawing from it changes no other random number; the seed's "order" part then varies nothing.
    """

    def __init__(self, split: Split, batch_size: int, generator: torch.Generator, shuffle: bool = True):
        self.split, self.generator, self.shuffle = split, generator, shuffle
        self.batch_size = min(batch_size, len(split))
        self.per_epoch = len(split) // self.batch_size
        self.whole_split = self.batch_size == len(split)
        self._order, self._next = None, self.per_epoch

    def __next__(self):
        if self.whole_split:
            return self.split.x, self.split.y
        return self.gathered()

    def gathered(self):
        """The next batch as a copy of its rows, gathered by index (every batch smaller than the split)."""
        index = self.next_index()
        return self.split.x.index_select(0, index), self.split.y.index_select(0, index)  # 3x faster than x[index]

    def next_index(self) -> torch.Tensor:
        """The rows of the next batch (smaller than the split), in this generator's order."""
        if self._next == self.per_epoch:
            self._order, self._next = self.epoch_order(), 0
        index = self._order[self._next]
        self._next += 1
        return index

    def epoch_order(self) -> torch.Tensor:
        """The next epoch's batches, (per_epoch, batch_size) rows: stacked seeds (run/stacked.py) draw
        each seed's whole epoch at once and gather all seeds' batches in one op. Use this or next_index."""
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return order.to(self.split.x.device)[: self.per_epoch * self.batch_size].view(self.per_epoch, self.batch_size)

    def __iter__(self):
        return self


def steps_per_epoch(n_train: int, batch_size: int, accumulate: int) -> int:
    return max(1, (n_train // min(batch_size, n_train)) // accumulate)


def epochs_to_steps(epochs: float, n_train: int, batch_size: int, accumulate: int) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch(n_train, batch_size, accumulate)))
