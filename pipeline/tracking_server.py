"""``python -m pipeline.tracking_server``: the team's MLflow tracking server, and its accounts.

Start it (binds 127.0.0.1 unless ``--host`` says otherwise; TLS belongs in a reverse proxy)::

    MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.example:5432/mlflow \\
    PGPASSWORD="$(cat ~/.config/mlflow-db-password)" \\
    MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/mlflow \\
    MLFLOW_AUTH_ADMIN_PASSWORD_FILE=~/.config/mlflow-admin-password \\
    python -m pipeline.tracking_server --port 5000

It is ``mlflow server --app-name basic-auth`` with artifacts proxied by the server; MLflow
creates or upgrades the schema on start. The accounts live in PostgreSQL too (the same
database unless ``MLFLOW_AUTH_DATABASE_URI`` names another). The admin
(``MLFLOW_AUTH_ADMIN_USERNAME``, default ``admin``) takes its password from
``MLFLOW_AUTH_ADMIN_PASSWORD`` or the file in ``MLFLOW_AUTH_ADMIN_PASSWORD_FILE``.

Add an account with READ, EDIT or MANAGE on the experiment and the registered model named
in params.yaml (as the admin: ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``,
``MLFLOW_TRACKING_PASSWORD``; the new password from ``--password-file`` or a prompt)::

    python -m pipeline.tracking_server users add alice --permission edit
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.core import tracking
from pipeline.core.cli import run
from pipeline.core.errors import PipelineError, first_line, redact
from pipeline.core.params import load_params
from pipeline.core.urls import with_driver

log = logging.getLogger(__name__)

PERMISSIONS = ("read", "edit", "manage")
# Accounts get only what they are granted; MLflow's own default (READ for everyone) would
# let any account read every experiment on the server.
DEFAULT_PERMISSION = "NO_PERMISSIONS"
DB_CONNECT_TIMEOUT_S = 5
# MLflow checks the password's PBKDF2 hash on every request (0.7-1.3 s each on this
# project's 2 shared cores): cache a good check this long per worker. The worker that
# changes a password or deletes an account forgets it at once; the others within this time.
AUTH_CACHE_TTL_S = 60


class ServerError(PipelineError):
    """The tracking server cannot start as configured."""


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """``$NAME``, else the first line of the file in ``$NAME_FILE`` (kept out of git)."""
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if not path:
        return None
    try:
        value = Path(path).expanduser().read_text().splitlines()
    except OSError as e:
        raise ServerError(f"{name}_FILE={path}: cannot read it ({e.strerror})") from None
    if not value or not value[0]:
        raise ServerError(f"{name}_FILE={path}: the file is empty")
    return value[0]


def check_database(uri: str, timeout_s: int = DB_CONNECT_TIMEOUT_S) -> None:
    """Fail with one line (credentials hidden) when the database does not answer."""
    import sqlalchemy

    args = {"connect_timeout": timeout_s} if uri.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:
        reason = first_line(getattr(e, "orig", None) or e)
        raise ServerError(f"database {redact(uri)} is unreachable: {reason}") from None


def auth_config(
    database_uri: str,
    admin_username: str,
    default_permission: str,
    cache_ttl_s: int = AUTH_CACHE_TTL_S,
) -> str:
    """The basic-auth app's ini file (no admin password: that travels in the environment)."""
    # configparser interpolates '%' (a URL-encoded password has them): escape it.
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_ttl_s}\n"
    )


def write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (it holds the database password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def server_command(host: str, port: int, workers: int) -> list[str]:
    """``mlflow server`` with accounts; stores and secrets come from the environment."""
    return [
        sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--serve-artifacts",
    ]  # fmt: skip


def serve(host: str, port: int, workers: int, env: Mapping[str, str] = os.environ) -> int:
    """Check the configuration and the database, then run the server until it stops."""
    backend = with_driver(env.get("MLFLOW_BACKEND_STORE_URI", "").strip())
    if not backend:
        raise ServerError("MLFLOW_BACKEND_STORE_URI is not set (postgresql://user@host/db)")
    artifacts = env.get("MLFLOW_ARTIFACTS_DESTINATION", "").strip()
    if not artifacts:
        raise ServerError(
            "MLFLOW_ARTIFACTS_DESTINATION is not set (a directory, s3://bucket/path, ...)"
        )
    auth_db = with_driver(env.get("MLFLOW_AUTH_DATABASE_URI", "").strip()) or backend
    admin = env.get("MLFLOW_AUTH_ADMIN_USERNAME", "").strip() or "admin"
    password = _secret(env, "MLFLOW_AUTH_ADMIN_PASSWORD")
    if not password:
        raise ServerError(
            "no admin password: set MLFLOW_AUTH_ADMIN_PASSWORD or MLFLOW_AUTH_ADMIN_PASSWORD_FILE"
        )
    default = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "").strip() or DEFAULT_PERMISSION
    ttl = env.get("MLFLOW_AUTH_CACHE_TTL_S", "").strip() or str(AUTH_CACHE_TTL_S)
    if not ttl.isdigit():
        raise ServerError(f"MLFLOW_AUTH_CACHE_TTL_S: expected seconds (0 = off), got {ttl!r}")
    for uri in dict.fromkeys((backend, auth_db)):
        check_database(uri)

    # The ini names the auth database (its password included): a private temp dir outside
    # the project, removed when the server stops.
    private = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    try:
        config = private / "basic_auth.ini"
        write_private(config, auth_config(auth_db, admin, default, int(ttl)))
        child_env = {
            **env,
            "MLFLOW_BACKEND_STORE_URI": backend,
            "MLFLOW_ARTIFACTS_DESTINATION": artifacts,
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_USERNAME": admin,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            # The auth app's CSRF key must be the same in every worker; a new one per start
            # only signs out browser sessions.
            "MLFLOW_FLASK_SERVER_SECRET_KEY": env.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
            or secrets.token_hex(32),
            # MLflow's job runner (GenAI scorers, prompt optimization: unused here) would
            # start five more worker processes; set it to true to have them.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": env.get(
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"
            ),
        }
        child_env.pop("MLFLOW_AUTH_ADMIN_PASSWORD_FILE", None)
        log.info(
            "MLflow server on http://%s:%d: store %s, artifacts %s, accounts in %s",
            host, port, redact(backend), redact(artifacts),
            redact(auth_db),
        )  # fmt: skip
        proc = subprocess.Popen(server_command(host, port, workers), env=child_env)
        try:
            return proc.wait()
        except KeyboardInterrupt:  # SIGTERM/SIGINT (pipeline.core.cli): stop the server with us
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    finally:
        shutil.rmtree(private, ignore_errors=True)


def read_new_password(path: str | None) -> str:
    """The new account's password: first line of ``path``, else asked for twice."""
    if path:
        return _secret({"P_FILE": path}, "P") or ""
    if not sys.stdin.isatty():
        raise PipelineError("no password: pass --password-file FILE (or run in a terminal)")
    first = getpass.getpass("new password: ")
    if first != getpass.getpass("again: "):
        raise PipelineError("the two passwords differ")
    return first


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking_server", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    sub = parser.add_subparsers(dest="command")
    users = sub.add_parser("users", help="manage accounts (as the admin)")
    users_sub = users.add_subparsers(dest="action", required=True)
    add = users_sub.add_parser("add", help="create an account (or change its permission)")
    add.add_argument("username")
    add.add_argument("--permission", choices=PERMISSIONS, required=True)
    add.add_argument("--password-file", help="first line = the new password (else a prompt)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "users":
        params = load_params()
        tracking.use_store()
        tracking.add_user(
            args.username,
            read_new_password(args.password_file),
            args.permission.upper(),
            experiment=params.tracking.experiment,
            model_name=params.register.model_name,
        )
        return
    code = serve(args.host, args.port, args.workers)
    if code != 0:
        raise ServerError(f"mlflow server exited with status {code} (its log is above)")


if __name__ == "__main__":
    run(main)
