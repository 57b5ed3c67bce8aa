"""Is a tracking server or database there at all? Asked once, in seconds, before anything starts.

MLflow retries a server it cannot reach for minutes before it says anything (measured for an
`http://` URI on a closed port and for `postgresql://` with nothing listening: docs/performance.md).
A command should not wait that long to learn that a URI is wrong, so `probe_store` opens one
TCP connection with a short timeout, then asks the server once (MLflow with no retries; the
database with a connect timeout), and raises a UsageError that names the URI (password hidden:
`hide_passwords`, the one place that hides them) and the reason.

    probe_store("http://127.0.0.1:5000")   # UsageError: ... cannot be reached: Connection refused ...
"""
import contextlib
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from optimstudy.errors import UsageError

SQLITE = "sqlite:///"  # SQLAlchemy's form: sqlite:///relative/path, sqlite:////absolute/path
PROBE_TIMEOUT_S = 5.0  # a server that takes longer to accept one connection is not usable for a sweep
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


def sqlite_path(uri: str | None) -> Path | None:
    """The database file of a sqlite:/// URI; None for any other URI (a server, PostgreSQL)."""
    return Path(uri[len(SQLITE):]) if uri and uri.startswith(SQLITE) else None

# scheme://user:PASSWORD@host: the password runs to the last "@" before a space or quote, as
# SQLAlchemy parses it (it may hold "/" or ":"); the user part is whatever precedes the first ":".
_URI_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^\s/:@'\"]*:)[^\s'\"]*@")
# libpq's conninfo (psycopg can quote it in an error): password=SECRET or password='SECRET'
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s,;)]+)", re.IGNORECASE)


# scheme://user: the start of a password; what may follow the "@" that ends it: a host (or an IPv6
# address, or none: a Unix socket), a numeric port, a path without "@", then a query (which may hold "@")
_USER = re.compile(r"[A-Za-z][\w+.-]*://[^/:@?#]*:")
_AFTER_PASSWORD = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^/:?#@\[\]]*)(:\d*)?(/[^?#@]*)?([?#].*)?", re.DOTALL)
# what a parser reads as the end of the password, the host or the path; a "%" must start a %XX escape
_UNENCODED = re.compile(r"[@/?#]|%(?![0-9A-Fa-f]{2})")


def typed_password(uri: str) -> str | None:
    """The password of scheme://user:PASSWORD@host/... as typed: up to the first "@" that a host, a
    port and a path can follow (else the last "@"); None when the URI has none."""
    user = _USER.match(uri)
    ats = [index for index, char in enumerate(uri) if char == "@" and user and index >= user.end()]
    if not ats:
        return None
    query = uri.find("?", user.end())
    if 0 <= query < ats[0] and _plain_address(uri[:query]):
        return None  # scheme://host:port/db?key=a@b: no user, no password; the "@" is the query's
    end = next((at for at in ats if _AFTER_PASSWORD.fullmatch(uri, at + 1)), ats[-1])
    return uri[user.end():end]


def _plain_address(uri: str) -> bool:
    """Whether `uri` parses as scheme://host[:port][/path], with no user and a numeric port."""
    try:
        parsed = urlparse(uri)
        parsed.port  # noqa: B018  raises ValueError for a port that is not a number
    except ValueError:
        return False
    return "@" not in parsed.netloc


def check_password_encoded(uri: str | None, source: str) -> None:
    """Refuse a store URI whose password is typed unencoded (a raw "@", "/", "?", "#" or a "%" that
    starts no %XX), before any parser splits it and quotes a piece of it as a host or a port. The
    message never shows the password, nor which of those characters it holds. A raw ":" parses the
    same in every parser here (SQLAlchemy, urllib), so it is accepted.

        check_password_encoded("postgresql+psycopg://v:Sec@ret@db/x", "--storage")   # UsageError
    """
    password = typed_password(uri or "")
    if password is not None and _UNENCODED.search(password):
        raise UsageError(
            f"{source} '{hide_passwords(uri)}': its password holds a character that must be percent-encoded in "
            "a URI (@ / ? # or a % not followed by two hex digits). Encode the password, e.g. with python -c "
            "\"import getpass, urllib.parse; print(urllib.parse.quote(getpass.getpass(), safe=''))\" "
            "(@ -> %40, : -> %3A, / -> %2F, % -> %25), and put the result between ':' and '@'")


def hide_passwords(text) -> str:
    """`text` (a URI, or a message, page or command that quotes one) with every password in it
    replaced by ***. The one place a password is hidden: everything optimstudy prints, logs, tags
    or writes that could hold a store URI goes through here.

        hide_passwords("postgresql+psycopg://me:pw@db/optuna")   # 'postgresql+psycopg://me:***@db/optuna'
    """
    text = _URI_PASSWORD.sub(r"\1***@", str(text))
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def probe_store(tracking_uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise a UsageError unless the server behind `tracking_uri` answers; local stores pass untouched."""
    parsed = urlparse(tracking_uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme not in DEFAULT_PORTS or not parsed.hostname:
        return  # sqlite:///, file paths, databricks, a database over a Unix socket: nothing to reach
    shown = hide_passwords(tracking_uri)
    try:
        port = parsed.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise UsageError(f"tracking URI '{shown}' has no valid port") from None
    what = "MLflow server" if scheme.startswith("http") else "database server"
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as error:
        reason = (f"no answer within {timeout_s:g} s" if isinstance(error, TimeoutError)
                  else error.strerror or str(error))
        start = ("start it (`mlflow server --host 127.0.0.1 --port PORT ...`)" if what == "MLflow server"
                 else "start the database server")
        raise UsageError(f"tracking URI '{shown}' cannot be reached: {reason} (host {parsed.hostname}, port {port}). "
                         f"Is the {what} running there? {start[0].upper() + start[1:]}, pass another "
                         "--tracking-uri, or leave it out for the local ./mlruns store") from None
    if what == "MLflow server":
        _ask_mlflow(tracking_uri, shown, timeout_s)
    else:
        _ask_database(tracking_uri, shown, scheme, timeout_s)


def _ask_mlflow(tracking_uri: str, shown: str, timeout_s: float) -> None:
    """One request, no retries: something listens on the port, but is it an MLflow server that answers?"""
    from mlflow import MlflowClient  # on first use: it imports mlflow

    with _environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(2 * timeout_s))):
        try:
            MlflowClient(tracking_uri).search_experiments(max_results=1)
        except Exception as error:  # noqa: BLE001  whatever the server answers, said as a usage error
            raise UsageError(f"tracking URI '{shown}' accepts connections but does not answer as an MLflow server "
                             f"(one request, {2 * timeout_s:g} s at most): {_first_line(error)}") from None


def _ask_database(tracking_uri: str, shown: str, scheme: str, timeout_s: float) -> None:
    """One connection: a wrong password or a missing database fails now, not after MLflow's long retries."""
    import sqlalchemy  # on first use: it imports sqlalchemy

    connect_args = {"connect_timeout": int(timeout_s)} if scheme in ("postgresql", "postgres", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(tracking_uri, connect_args=connect_args)
    except Exception as error:  # noqa: BLE001  e.g. the driver is not installed
        raise UsageError(f"tracking URI '{shown}' cannot be used: {_first_line(error)}") from None
    try:
        with engine.connect():
            pass
    except Exception as error:  # noqa: BLE001  the driver's own errors, said as a usage error
        raise UsageError(f"tracking URI '{shown}': the database server refuses the connection: "
                         f"{_first_line(error)}") from None
    finally:
        engine.dispose()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    if hasattr(error, "orig") and error.orig is not None:  # SQLAlchemy wraps the driver's own message
        text = str(error.orig).strip()
    return hide_passwords(f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}")


@contextlib.contextmanager
def _environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
