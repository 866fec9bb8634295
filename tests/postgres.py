"""A throwaway PostgreSQL server for the tests of bruto.cluster: initdb + pg_ctl in a temp dir.

    server = PostgresServer.start()
    url = server.create_database()   # a fresh, empty database: what BRUTO_DATABASE_URL names
    server.stop("immediate"); server.start_again()
    server.destroy()

initdb refuses to run as root, and CI runs as root: then every server
command runs as Debian's ``postgres`` user (``runuser``), in a directory that
user owns. As any other user they run as that user. The server listens on
127.0.0.1 on a free port and on a unix socket in its own directory, with
trust authentication (nothing but this machine reaches it), and keeps
PostgreSQL's durable defaults (fsync on): the fault tests restart it with
``-m immediate`` and expect to find what was committed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid

from gateway import free_port


def _bin_dir() -> str:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise RuntimeError("PostgreSQL's initdb is not installed: `make postgres` installs Debian's postgresql")


class PostgresServer:
    """One server: its data directory, port and the user it runs as."""

    def __init__(self, root: str, port: int, user: str | None):
        self.root = root
        self.data = os.path.join(root, "data")
        self.sockets = os.path.join(root, "sockets")
        self.port = port
        self.user = user  # run the server commands as this user (None: as ourselves)
        self.bin = _bin_dir()

    @classmethod
    def start(cls) -> "PostgresServer":
        root = tempfile.mkdtemp(prefix="bruto-pg-")
        user = "postgres" if os.geteuid() == 0 else None
        os.makedirs(os.path.join(root, "sockets"))
        if user:
            entry = pwd.getpwnam(user)
            for path in (root, os.path.join(root, "sockets")):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        server = cls(root, free_port(), user)
        server._run("initdb", "-D", server.data, "--auth=trust", "--username=postgres", "--encoding=UTF8",
                    "--no-instructions")
        with open(os.path.join(server.data, "postgresql.auto.conf"), "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {server.port}\n"
                       f"unix_socket_directories = '{server.sockets}'\n"
                       # Small: a test server beside the stack on a 2-core machine.
                       "shared_buffers = 32MB\nmax_connections = 100\n")
        server.start_again()
        return server

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [os.path.join(self.bin, program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, cwd=self.root)

    def start_again(self) -> None:
        """Start the server (after :meth:`stop`), waiting until it accepts connections."""
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: ``fast`` (clean), or ``immediate`` (no checkpoint: a crash, recovered at start)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = "bruto_" + uuid.uuid4().hex[:12]
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql (as the tests' independent reader); its unaligned output."""
        done = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-d", self.url(database), "-c", sql], check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def log(self) -> str:
        try:
            with open(os.path.join(self.root, "server.log"), errors="replace") as f:
                return f.read()[-4000:]
        except FileNotFoundError:
            return ""

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
