"""The errors every layer shares: UsageError (bad input: the CLI turns it into exit code 2 and one
message, no traceback) and Stop (a run ended early on purpose)."""
import difflib


class UsageError(Exception):
    """Bad input from the user: shown without a traceback, exit code 2."""


def near(word: str, valid) -> str:
    """' (did you mean 'adam'?)' when a valid name is close to `word`, else ''."""
    close = difflib.get_close_matches(str(word), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, word, valid) -> UsageError:
    return UsageError(
        f"unknown {kind} '{word}'{near(word, valid)}; valid: {', '.join(sorted(map(str, valid)))}"
    )


class Stop(Exception):
    """Raised by an `on_eval` hook to end a run early (a pruned sweep trial); the run ends KILLED."""


class TrialTimeout(Exception):
    """A run went past its wall-clock limit (trial_timeout_s, --trial-timeout) or made no progress
    for the stall limit (processes.Watchdog); the run and its trial end FAILED with this message."""
