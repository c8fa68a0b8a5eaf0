"""A local PostgreSQL of our own: the embedded default when ``NOTECARD_POSTGRES_URL`` is not
set, for ``notecard dev``, the tests and the drills (as :mod:`notecard.local_redis` is for
Redis).

It runs the distribution's server binaries (``initdb``, ``pg_ctl``: on PATH, else Debian's
``/usr/lib/postgresql/<version>/bin``) on a folder of its own made under the system's
temporary folder, listening on a free loopback port and on a Unix socket in that folder
only. Every connection needs a password (SCRAM): a loopback port is open to every local user.

PostgreSQL refuses to run as root. Run as root (a container, CI), the server runs as the
``postgres`` system user that Debian's package creates, and the folder is handed to it: that
is also why the folder is a fresh one under ``/tmp`` rather than inside a caller's folder,
which the ``postgres`` user may not be able to enter.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from notecard.local_redis import free_port

#: The server's start and stop wait at most this long (initdb and a first start take a few
#: seconds on a busy machine).
READY_TIMEOUT_S = 60
#: The role and the first database the URL names.
USER = "notecard"
#: The system user the server runs as when we are root.
SYSTEM_USER = "postgres"


class PostgresNotInstalled(RuntimeError):
    """``initdb`` / ``pg_ctl`` are not installed."""


def find_server_binaries() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then the newest Debian one."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    if found:
        return Path(found[-1]).parent
    raise PostgresNotInstalled(
        "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: install them (Debian/Ubuntu: "
        "apt-get install postgresql, or run scripts/setup) or set NOTECARD_POSTGRES_URL")


class LocalPostgres:
    """One PostgreSQL server in a folder of its own. ``start()`` returns once it accepts
    connections; ``stop()`` stops it and removes the folder."""

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1", durable: bool = True,
                 parent: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        #: False for tests: no fsync (a clean stop or restart still loses nothing).
        self.durable = durable
        self._parent = parent
        self.password = secrets.token_urlsafe(24)
        self.root: Path | None = None
        self._bin: Path | None = None

    @property
    def url(self) -> str:
        """``postgresql://notecard:password@host:port/notecard``."""
        return self.url_of(USER)

    def url_of(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "data"

    def _run(self, *args: str) -> None:
        """A server binary, as the ``postgres`` user when we are root."""
        assert self._bin is not None and self.root is not None
        as_user: dict[str, object] = {}
        if os.geteuid() == 0:
            as_user = {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid, "extra_groups": []}
        done = subprocess.run([str(self._bin / args[0]), *args[1:]], cwd=self.root, capture_output=True,
                              env={**os.environ, "PGPASSWORD": self.password},
                              timeout=READY_TIMEOUT_S + 30, check=False, **as_user)  # type: ignore[call-overload]
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} {args[1]} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).decode(errors='replace')[-800:]}{tail}")

    def _options(self) -> str:
        assert self.root is not None
        options = [f"-p {self.port}", f"-c listen_addresses={self.host}", f"-k {self.root}"]
        if not self.durable:
            options += ["-c fsync=off", "-c full_page_writes=off"]
        return " ".join(options)

    def start(self) -> LocalPostgres:
        self._bin = find_server_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="notecard-pg-", dir=self._parent))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PostgresNotInstalled(f"running as root needs the {SYSTEM_USER} system user (apt-get install "
                                           "postgresql creates it)") from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        pwfile = self.root / "pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam(SYSTEM_USER).pw_uid, -1)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", USER, "--pwfile", str(pwfile),
                      "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions")
            pwfile.unlink()
            self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-w",
                      "-t", str(READY_TIMEOUT_S), "-o", self._options())
            self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", USER, USER)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """``pg_ctl restart``: every connection is cut, the server is back when this returns."""
        self._run("pg_ctl", "restart", "-D", str(self.data_dir), "-l", str(self.data_dir.parent / "server.log"),
                  "-w", "-t", str(READY_TIMEOUT_S), "-m", "fast", "-o", self._options())

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", USER, name)
        return self.url_of(name)

    def stop(self) -> None:
        """``pg_ctl stop`` (fast: open transactions roll back), then remove the folder."""
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(READY_TIMEOUT_S))
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
