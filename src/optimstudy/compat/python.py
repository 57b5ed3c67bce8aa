"""CPython internals the command's quick exit relies on (cli.py)."""
import atexit


def run_exit_handlers() -> None:
    """Run every atexit handler now, as a normal exit would, before os._exit skips the rest.

    Private: `atexit._run_exitfuncs`. os._exit skips the interpreter's teardown (slow with torch,
    MLflow and pandas loaded) but also the atexit handlers that flush and close what libraries
    opened; no public function runs them. If it goes: an AttributeError as a command exits (after
    its work is done, with a traceback); tests/compat/test_compat.py fails first."""
    atexit._run_exitfuncs()
