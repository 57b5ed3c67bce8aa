"""A store's password is never shown, stored or put on a command line.

One PostgreSQL role with a password that appears nowhere else; a sweep, `run`,
`report`, `check`, `ui` and `dashboard` on its databases, with the URIs given the way a user keeps
them off their own command line (MLFLOW_TRACKING_URI, OPTIMSTUDY_STORAGE). Then the password is
looked for everywhere they could have left it: their output, every file under the working folder
(the report page, the artifacts attached to the parent run, the journal), MLflow's tags, params
and descriptions, Optuna's attributes, and the command line of every process on the machine
while they ran (`ps` shows those to every user).
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from helpers import in_process, missing, write_tiny_spec


@pytest.fixture
def private_databases(postgres_server):
    """(optuna URL, mlflow URL, password) on databases owned by a fresh role with a unique password."""
    password = f"Pw{uuid.uuid4().hex}"
    with private_role(postgres_server, password) as urls:
        yield (*urls, password)


@contextlib.contextmanager
def private_role(postgres_server: str, password: str):
    """(optuna URL, mlflow URL), the password percent-encoded, on two databases owned by a fresh role."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    server = make_url(f"{postgres_server}/postgres")
    role = f"optimstudy_secret_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'"))
    except sa.exc.ProgrammingError:
        admin.dispose()
        missing("the test role cannot create roles: run .ci/postgres.sh (it grants CREATEROLE)")
    owner = sa.create_engine(server.set(username=role, password=password), isolation_level="AUTOCOMMIT")
    names = [f"{role}_optuna", f"{role}_mlflow"]
    try:
        with owner.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield tuple(f"{server.drivername}://{role}:{quote(password, safe='')}@{server.host}:{server.port}/{name}"
                    for name in names)
    finally:
        with owner.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        owner.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def command_lines() -> dict[int, bytes]:
    """Every process's command line on this machine, as `ps` would show it."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:  # ended meanwhile
                continue
    return found


def watch(process, secret: bytes, until=None, timeout=300) -> list[bytes]:
    """Every distinct command line seen while `process` runs (or until `until()`); fails on one with the secret."""
    seen, deadline = set(), time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline and not (until and until()):
        for pid, line in command_lines().items():
            assert secret not in line, f"process {pid} has the password on its command line: {line!r}"
            seen.add(line)
        time.sleep(0.2)
    return sorted(seen)


def responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.postgres
def test_the_store_password_appears_in_no_output_file_tag_or_command_line(tmp_path, private_databases):
    optuna_url, mlflow_url, password = private_databases
    secret = password.encode()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url, "OPTIMSTUDY_STORAGE": optuna_url}
    write_tiny_spec(tmp_path, "secretive", steps=60)
    outputs = []

    def optimstudy(*args, until=None):
        """Run a command, watching every command line on the machine while it runs; its output."""
        log = tmp_path.parent / f"{tmp_path.name}-output-{len(outputs)}.txt"  # outside the scanned folder
        with log.open("w") as output:
            process = subprocess.Popen([sys.executable, "-m", "optimstudy", *map(str, args)], cwd=tmp_path, env=env,
                                       stdout=output, stderr=subprocess.STDOUT)
            try:
                seen = watch(process, secret, until)
            finally:  # a server, or a command the scan failed on: stopped as `kill` would stop it
                process.send_signal(signal.SIGTERM)  # (SIGINT may be ignored when the tests run in the background)
                process.wait(timeout=120)
        out = log.read_text()
        outputs.append(out)
        return process.returncode, out, seen

    code, out, seen = optimstudy("sweep", "secretive.toml", "--json")
    assert code == 0, out[-3000:]
    assert any(b"optimstudy.tracking.writer" in line for line in seen), (
        "the writer was never seen: the scan proved nothing")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["storage"] == optuna_url.replace(password, "***")
    assert summary["tracking_uri"] == mlflow_url.replace(password, "***")

    code, out, _ = optimstudy("run", "--problem", "linreg", "--steps", "20")
    assert code == 0 and "tracked as run" in out and ":***@" in out, out[-3000:]
    code, out, _ = optimstudy("report", "--out", "analysis")
    assert code == 0 and (tmp_path / "analysis" / "report.html").exists(), out[-3000:]
    assert ":***@" in (tmp_path / "analysis" / "report.html").read_text()  # it names the store, masked
    code, out, _ = optimstudy("check", "secretive.toml")
    assert code == 0 and ":***@" in out.splitlines()[0], out[-3000:]
    code, out, _ = optimstudy("report", "--experiment", "nosuch")
    assert code == 2 and "nosuch" in out and "Traceback" not in out, out[-3000:]

    ui, board = free_port(), free_port()
    code, out, seen = optimstudy("ui", "--port", ui,
                                 until=lambda: responds(f"http://127.0.0.1:{ui}/api/2.0/mlflow/experiments/"
                                                        "search?max_results=1"))
    assert "MLflow UI for" in out and ":***@" in out, out[-3000:]
    assert any(b"uvicorn" in line for line in seen), "the UI's server was never seen: the scan proved nothing"
    code, out, seen = optimstudy("dashboard", "secretive.toml", "--port", board,
                                 until=lambda: responds(f"http://127.0.0.1:{board}/api/studies"))
    assert responds(f"http://127.0.0.1:{board}/api/studies") is False  # stopped with the command
    assert "optuna-dashboard on" in out and ":***@" in out, out[-3000:]
    assert any(b"optuna-dashboard" in line for line in seen)

    # a database that refuses: the driver's error and our message name the URI, never the password
    env["OPTIMSTUDY_STORAGE"] = optuna_url.rsplit("/", 1)[0] + "/no_such_database"
    code, out, _ = optimstudy("check", "secretive.toml")
    assert code == 2 and "no_such_database" in out and "Traceback" not in out, out[-3000:]

    for index, out in enumerate(outputs):
        assert password not in out, f"output {index} shows the password"
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    attached = [path for path in files if path.name == "report.html" and "artifacts" in path.parts]
    assert attached and ":***@" in attached[0].read_text()  # the copy attached to the parent run
    for path in files:
        assert secret not in path.read_bytes(), f"{path} holds the password"
    assert_not_in_the_stores(mlflow_url, optuna_url, password)


def assert_not_in_the_stores(mlflow_url: str, optuna_url: str, password: str) -> None:
    """Every tag, param and description MLflow keeps, and every Optuna attribute, without the password."""
    import optuna
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_url)
    texts = []
    for experiment in client.search_experiments():
        texts += [experiment.name, experiment.artifact_location, json.dumps(experiment.tags)]
        for run in client.search_runs([experiment.experiment_id]):
            texts += [json.dumps(run.data.tags), json.dumps(run.data.params), run.info.artifact_uri]
    assert len(texts) > 10
    study = optuna.load_study(study_name="secretive", storage=optuna_url)
    texts += [json.dumps(study.user_attrs, default=str)]
    texts += [json.dumps(trial.user_attrs, default=str) for trial in study.trials]
    for text in texts:
        assert password not in str(text), text[:500]


@pytest.mark.slow
@pytest.mark.postgres
def test_a_password_typed_unencoded_is_refused_with_how_to_encode_it_and_never_shown(tmp_path, postgres_server):
    pieces = [uuid.uuid4().hex[:10] for _ in range(5)]
    password = "{}@{}:{}%40{}/{}".format(*pieces)  # every character a URI parser splits on, and a "%40" of its own
    with private_role(postgres_server, password) as (optuna_url, mlflow_url):
        typed_optuna, typed_mlflow = (url.replace(quote(password, safe=""), password)
                                      for url in (optuna_url, mlflow_url))
        assert typed_mlflow.count("@") == 2 and unquote(mlflow_url).count(password) == 1
        write_tiny_spec(tmp_path, "secretive", steps=60, seeds=(0,), optimizers={"sgd": [0.1]})

        def optimstudy(*args, **variables):
            done = subprocess.run([sys.executable, "-m", "optimstudy", *args], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=300, env={**os.environ, **variables})
            return done.returncode, done.stdout + done.stderr

        def refused_here(*args, **variables):
            """A refusal made by this process (helpers.in_process): the check is the command's own code, and
            a new process for each of the 13 would cost a minute; one of each kind below is a real process.
            --debug raises the UsageError: its traceback, formatted as the interpreter prints it."""
            with pytest.MonkeyPatch.context() as patch:
                for name, value in variables.items():
                    patch.setenv(name, value)
                try:
                    done = in_process(*args, cwd=tmp_path)
                except Exception as error:  # --debug: raised to the interpreter, which prints it
                    return 1, "Traceback (most recent call last):\n" + "".join(traceback.format_exception(error))
            return done.returncode, done.stdout + done.stderr

        typed = [("sweep", "secretive.toml", "--tracking-uri", typed_mlflow),
                 ("sweep", "secretive.toml", "--storage", typed_optuna, "--tracking-uri", mlflow_url),
                 ("sweep", "secretive.toml", "--dry-run", "--storage", typed_optuna),
                 ("run", "--problem", "linreg", "--steps", "5", "--tracking-uri", typed_mlflow),
                 ("report", "--tracking-uri", typed_mlflow), ("ui", "--tracking-uri", typed_mlflow),
                 ("check", "secretive.toml", "--storage", typed_optuna, "--tracking-uri", mlflow_url),
                 ("dashboard", "--storage", typed_optuna)]
        outputs = []
        debugged = [("--debug", *args) for args in typed[:2] + typed[3:5]]
        for index, args in enumerate(typed + debugged):
            real = index in (0, len(typed))  # the first of each: a real process, exit code and traceback its own
            code, out = (optimstudy if real else refused_here)(*args)
            debug = args[0] == "--debug"  # --debug: the UsageError raised, its traceback shown (exit 1)
            assert (code == (1 if debug else 2) and "must be percent-encoded" in out
                    and "quote(" in out), (args[:2], out[-2000:])
            assert ("Traceback" in out) == debug, out[-2000:]
            outputs.append(out)
        for variable, command in (("MLFLOW_TRACKING_URI", ("report",)),
                                  ("OPTIMSTUDY_STORAGE", ("check", "secretive.toml"))):
            code, out = refused_here(*command,
                                     **{variable: typed_mlflow if variable.startswith("MLFLOW") else typed_optuna})
            assert (code == 2 and "must be percent-encoded" in out
                    and (f"${variable}" in out or "--storage" in out)), out[-2000:]
            outputs.append(out)

        # encoded, it works; a raw ":" parses the same everywhere, so it may stay as typed
        colon_kept = mlflow_url.replace(quote(password, safe=""), quote(password, safe=":"))
        code, out = optimstudy("run", "--problem", "linreg", "--steps", "5", "--tracking-uri", colon_kept)
        assert code == 0 and "tracked as run" in out, out[-3000:]
        outputs.append(out)
        code, out = optimstudy("sweep", "secretive.toml", "--storage", optuna_url, "--tracking-uri", mlflow_url)
        assert code == 0 and "secretive" in out, out[-3000:]
        outputs.append(out)
        for index, out in enumerate(outputs):
            for piece in pieces:
                assert piece not in out, f"output {index} shows part of the password: {out[-2000:]}"


@pytest.mark.parametrize("uri, password, refused", [
    ("postgresql+psycopg://v:Sec@ret55@host:5432/db", "Sec@ret55", True),
    ("postgresql+psycopg://v:p@ss:w%40rd/x@host/db", "p@ss:w%40rd/x", True),
    ("postgresql://u:ab@cd/ef@host/db", "ab@cd/ef", True),  # a "/" then a host-like piece: still one password
    ("postgresql://u:a?b@host/db", "a?b", True),
    ("postgresql://u:100%@host/db", "100%", True),
    ("postgresql://u:p%40ss%3Aw@host/db", "p%40ss%3Aw", False),  # encoded
    ("postgresql://u:pa:ss@host:5432/db", "pa:ss", False),  # a raw ":" parses the same everywhere
    ("postgresql+psycopg://u:pw@h/db?sslcert=/certs/a@b", "pw", False),  # an "@" in the query
    ("postgresql://u:pw@[::1]:5432/db", "pw", False),
    ("postgresql://u:pw@/db?host=/var/run/postgresql", "pw", False),  # a Unix socket
    ("postgresql://host:5432/db?application_name=a@b", None, False),
    ("postgresql://u@host/db", None, False),
    ("sqlite:////tmp/a@b/mlflow.db", None, False),
    ("http://127.0.0.1:5000", None, False),
])
def test_a_password_is_read_as_typed_and_refused_only_when_a_parser_would_split_it(uri, password, refused):
    from optimstudy.errors import UsageError
    from optimstudy.tracking.connectivity import check_password_encoded, typed_password

    assert typed_password(uri) == password
    if not refused:
        check_password_encoded(uri, "--storage")
        return
    with pytest.raises(UsageError) as caught:
        check_password_encoded(uri, "--storage")
    message = str(caught.value)
    assert message.startswith("--storage '") and "quote(getpass.getpass(), safe='')" in message
    for piece in password.replace("%", "@").replace("?", "@").replace("/", "@").split("@"):
        assert len(piece) < 3 or piece not in message, piece
