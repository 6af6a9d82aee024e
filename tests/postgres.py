"""A throwaway PostgreSQL server for the tests.

The project rule is that PostgreSQL tests run against a real server that the test session starts itself, so no
one has to set up a database first. `postgres_server()` finds the machine's PostgreSQL binaries, runs `initdb`
into a fresh temp dir and starts `postgres` on a unix socket inside that dir (no TCP port, so nothing is
reachable from outside and parallel sessions never collide), with durability switched off because test data
is disposable. Leaving the `with` block stops the server and deletes the dir.
If the test process dies instead, the server gets SIGQUIT from the kernel (PR_SET_PDEATHSIG), an atexit hook
covers ordinary exits, and the next session deletes dirs whose owner and server are both gone.

As root (CI containers), initdb and postgres refuse to run, so both run as the `postgres` user (`nobody` where
there is none) and the temp dir is handed to that user; root still reaches the socket.

Anything missing or failing raises `PostgresUnavailable` with the reason; the conftest fixture turns it into
a skip.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

USER = "whaleid"  # the superuser that initdb creates; trust auth, so no password
DATABASE = "whaleid"  # created empty once the server is up
PORT = 5432  # only names the socket file (.s.PGSQL.5432); there is no TCP listener
PREFIX = "whaleid-pg-"
START_TIMEOUT_S = 30.0
INITDB_TIMEOUT_S = 120.0
# Test data is disposable: skip every flush to disk.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
# libc, loaded before any fork, for prctl(PR_SET_PDEATHSIG) in the server process.
try:
    _LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


@dataclass
class PostgresServer:
    """A running throwaway server: `url` is a SQLAlchemy URL for its (empty) `whaleid` database."""

    bin_dir: Path
    root: Path  # the temp dir: data/, the socket, server.log
    process: subprocess.Popen
    version: str
    _stopped: bool = field(default=False, repr=False)

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        """A SQLAlchemy URL for another database on this server (`postgres` is the maintenance one)."""
        from sqlalchemy.engine import URL

        url = URL.create("postgresql+psycopg", username=USER, database=database, query={"host": str(self.root)})
        return url.render_as_string(hide_password=False)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL, each bounded; then delete the dir."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        for sig, wait_s in ((signal.SIGINT, 10), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait_s)
        shutil.rmtree(self.root, ignore_errors=True)


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and postgres, else the one on PATH."""

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bin_dir in candidates:
        if all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "postgres")):
            return bin_dir
    raise PostgresUnavailable(
        "no initdb/postgres found in /usr/lib/postgresql/*/bin or on PATH (`make postgres` installs them as root)"
    )


def _server_user() -> pwd.struct_passwd | None:
    """Who runs initdb and postgres: ourselves, or as root (which they refuse) the `postgres` user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root, and there is no 'postgres' or 'nobody' user to run the server as")


def _base_dir() -> Path:
    """Where the temp dir goes: a unix socket path must stay under ~100 bytes, so fall back to /tmp."""
    base = Path(tempfile.gettempdir())
    return base if len(str(base)) <= 60 else Path("/tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def remove_stale_dirs(base: Path) -> None:
    """Delete temp dirs left by killed sessions: both their owner and their server are gone."""
    for root in base.glob(PREFIX + "*"):
        owner = _read_pid(root / "owner.pid")
        server = _read_pid(root / "data" / "postmaster.pid")
        if owner is not None and not _alive(owner) and (server is None or not _alive(server)):
            shutil.rmtree(root, ignore_errors=True)


def _die_with_parent() -> None:
    """In the server process, after the switch of user (which would clear it): SIGQUIT, an immediate shutdown,
    when the test process dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG


def _run_kwargs(user: pwd.struct_passwd | None, root: Path) -> dict:
    """Popen arguments shared by initdb and postgres: the server user, a clean env, a cwd they can enter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and not k.startswith("LC_")}
    env.update(LC_ALL="C", LANG="C")
    kwargs: dict = {"env": env, "cwd": root}
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        env.update(HOME=str(root), USER=user.pw_name, LOGNAME=user.pw_name)
    return kwargs


def _wait_ready(server: PostgresServer, timeout_s: float) -> None:
    """Poll until the server accepts connections (bounded), then create the empty test database."""
    try:
        import psycopg
    except ImportError as e:
        raise PostgresUnavailable(f"psycopg is not installed ({e})") from e
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise PostgresUnavailable(
                f"postgres exited with code {server.process.returncode} while starting:\n{server.log_tail()}"
            )
        try:
            with psycopg.connect(
                host=str(server.socket_dir), port=PORT, user=USER, dbname="postgres", autocommit=True, connect_timeout=5
            ) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
                return
        except psycopg.OperationalError as e:
            last_error = e
            time.sleep(0.05)
    raise PostgresUnavailable(
        f"postgres did not accept connections within {timeout_s:.0f} s ({last_error}):\n{server.log_tail()}"
    )


def start(bin_dir: Path | None = None, timeout_s: float = START_TIMEOUT_S) -> PostgresServer:
    """Start a server and return it; the caller must `stop()` it (an atexit hook does so as a last resort)."""
    bin_dir = bin_dir if bin_dir is not None else find_bin_dir()
    for name in ("initdb", "postgres"):
        if not os.access(bin_dir / name, os.X_OK):
            raise PostgresUnavailable(f"{bin_dir / name} is missing or not executable")
    user = _server_user()
    base = _base_dir()
    remove_stale_dirs(base)
    try:
        root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    except OSError as e:
        raise PostgresUnavailable(f"cannot create a temp dir in {base}: {e}") from e
    process = None
    try:
        (root / "owner.pid").write_text(f"{os.getpid()}\n")  # lets remove_stale_dirs tell a dead session's dir
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        kwargs = _run_kwargs(user, root)
        version = subprocess.run(
            [bin_dir / "postgres", "--version"], capture_output=True, text=True, timeout=30, **kwargs
        ).stdout.strip()
        initdb = [bin_dir / "initdb", "-D", root / "data", "-U", USER, "-A", "trust"]
        initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
        try:
            done = subprocess.run(initdb, capture_output=True, text=True, timeout=INITDB_TIMEOUT_S, **kwargs)
        except subprocess.TimeoutExpired as e:
            raise PostgresUnavailable(f"initdb did not finish within {INITDB_TIMEOUT_S:.0f} s") from e
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
            raise PostgresUnavailable(f"initdb failed (exit {done.returncode}):\n{tail}")
        settings = {
            "listen_addresses": "",  # no TCP at all: the unix socket in the temp dir is the only way in
            "unix_socket_directories": str(root),
            "port": str(PORT),
            **FAST_SETTINGS,
        }
        command = [bin_dir / "postgres", "-D", root / "data"]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        with open(root / "server.log", "wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches pytest, whose teardown stops the server
                preexec_fn=_die_with_parent,
                **kwargs,
            )
    except BaseException as e:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(e, OSError | subprocess.SubprocessError):  # cannot chown, cannot run a binary, ...
            raise PostgresUnavailable(f"could not run PostgreSQL from {bin_dir}: {e}") from e
        raise
    server = PostgresServer(bin_dir=bin_dir, root=root, process=process, version=version)
    atexit.register(server.stop)
    try:
        _wait_ready(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def postgres_server(bin_dir: Path | None = None, timeout_s: float = START_TIMEOUT_S) -> Iterator[PostgresServer]:
    """Run a throwaway server for the duration of the `with` block, stopped and deleted however the block ends."""
    server = start(bin_dir, timeout_s)
    try:
        yield server
    finally:
        server.stop()
