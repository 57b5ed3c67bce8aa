"""A tqdm progress bar on a terminal, nothing otherwise (pipes and CI logs stay clean).

    with progress_bar("quickstart", unit="trial") as progress:
        progress(done, total)      # progress is None when stderr is not a terminal
"""
import sys


class progress_bar:
    """Yields a progress(done, total) callable on a terminal, None otherwise."""

    def __init__(self, description: str, unit: str):
        self.description, self.unit, self.bar = description, unit, None

    def __enter__(self):
        if not sys.stderr.isatty():
            return None
        from tqdm import tqdm  # on first use: it imports tqdm

        def progress(done, total):
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.description, unit=self.unit, leave=False,
                                mininterval=0.2, file=sys.stderr)
            self.bar.update(done - self.bar.n)

        return progress

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
