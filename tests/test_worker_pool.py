"""`vars worker`: the pool chosen from a stage's models, GPU pinning, and a real worker
process that reports its GPUs and consumes only its own stage's queues."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import msgspec
import pytest

from scheduler.cli import main
from vars_core.config import BatcherConfig, EmbedderConfig, EngineConfig, LLMConfig, RerankerConfig
from workers.pool import (
    PoolRefused,
    check_gpu_ids,
    choose_pool,
    cuda_visible_devices,
    node_name,
    stage_models,
)

SERVER = LLMConfig(kind="openai", base_url="http://vllm-agent:8000/v1", model="agent")


def config(**changes) -> EngineConfig:
    return msgspec.structs.replace(EngineConfig(), **changes)


def on_gpu(**changes) -> EngineConfig:
    return config(
        embedder=EmbedderConfig(kind="transformers", path="/models/e", device="cuda"),
        reranker=RerankerConfig(kind="yesno", path="/models/r", device="cuda:0"),
        **changes,
    )


def test_stages_that_call_servers_run_threads_without_a_batcher():
    cfg = config(agent=SERVER, judge="llm", judge_llm=SERVER)
    for stage in ("generate", "judge"):
        choice = choose_pool(stage, cfg)
        assert (choice.pool, choice.batcher) == ("threads", False)
        assert "model servers" in choice.reason and "vllm-agent" in choice.reason
    assert [m.role for m in stage_models("generate", cfg)] == ["agent"]
    assert stage_models("generate", config()) == []  # scripted: no model at all
    assert "no model" in choose_pool("update", cfg).reason


def test_in_process_models_on_a_gpu_run_threads_with_the_batcher():
    choice = choose_pool("retrieve", on_gpu(), "auto", concurrency=8)
    assert (choice.pool, choice.batcher) == ("threads", True)
    assert "embedder (transformers on cuda)" in choice.reason and "reranker (yesno on cuda:0)" in choice.reason
    assert [m.role for m in stage_models("extract", on_gpu())] == ["embedder"]


def test_the_batcher_stays_off_where_it_cannot_merge_or_is_not_wanted():
    assert not choose_pool("retrieve", on_gpu(), "threads", concurrency=1).batcher
    assert not choose_pool("retrieve", on_gpu(), "solo").batcher
    off = on_gpu(batcher=BatcherConfig(enabled=False))
    assert not choose_pool("retrieve", off, concurrency=8).batcher
    # The embedded default (MiniLM on CPU) keeps one text per pass unless asked.
    default = choose_pool("retrieve", config(), concurrency=8)
    assert (default.pool, default.batcher) == ("threads", False)
    assert choose_pool("retrieve", config(batcher=BatcherConfig(enabled=True)), concurrency=8).batcher


def test_prefork_is_refused_for_a_model_on_a_gpu_and_allowed_otherwise():
    with pytest.raises(PoolRefused, match=r"prefork.*retrieve.*embedder \(transformers on cuda\).*CUDA.*forks"):
        choose_pool("retrieve", on_gpu(), "prefork")
    cpu = choose_pool("retrieve", config(), "prefork")
    assert (cpu.pool, cpu.batcher) == ("prefork", False)
    assert "its own copy" in cpu.reason
    assert choose_pool("generate", on_gpu(agent=SERVER), "prefork").pool == "prefork"
    with pytest.raises(PoolRefused, match="unknown pool"):
        choose_pool("retrieve", config(), "gevent")


def test_gpu_ids_names_and_container_renumbering():
    assert check_gpu_ids("1") == "1" and check_gpu_ids("0,1") == "0,1"
    with pytest.raises(ValueError, match="--gpu"):
        check_gpu_ids("0, 1")
    assert node_name("retrieve", "1") == "retrieve-gpu1@%h"
    assert node_name("simulate", "0,1") == "simulate-gpu0-1@%h"
    assert node_name("update", None) == "update@%h"
    assert cuda_visible_devices("1", {}) == "1"
    assert cuda_visible_devices("1", {"NVIDIA_VISIBLE_DEVICES": "all"}) == "1"
    # compose device_ids ["3"]: the container sees host GPU 3 as its device 0
    assert cuda_visible_devices("3", {"NVIDIA_VISIBLE_DEVICES": "3"}) == "0"
    assert cuda_visible_devices("0,1", {"NVIDIA_VISIBLE_DEVICES": "0,1"}) == "0,1"
    assert cuda_visible_devices("2,3", {"NVIDIA_VISIBLE_DEVICES": "2,3"}) == "0,1"


def test_the_cli_refuses_prefork_for_a_gpu_model_before_loading_anything(monkeypatch, capsys):
    monkeypatch.setenv("VARS_EMBEDDER__DEVICE", "cuda")
    assert main(["worker", "--stage", "retrieve", "--pool", "prefork"]) == 2
    err = capsys.readouterr().err
    assert "error: --pool prefork cannot run the retrieve stage" in err and "CUDA" in err
    assert main(["worker", "--stage", "retrieve", "--gpu", "0;1"]) == 2
    assert "--gpu" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real worker
@pytest.fixture
def own_redis(tmp_path):
    """A private redis-server: a worker on a shared one could take other tests' tasks."""
    from scheduler.embedded_redis import EmbeddedRedis

    embedded = EmbeddedRedis(home=tmp_path)
    yield embedded.start()
    embedded.stop()


@pytest.mark.integration
def test_a_worker_started_with_gpu_1_reports_its_gpu_and_consumes_only_its_stage(own_redis, tmp_path):
    from scheduler.local import stop_processes
    from workers.app import make_app

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VARS_", "CUDA_", "NVIDIA_"))}
    env.update(REDIS_URL=own_redis, VARS_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "worker", "--stage", "retrieve", "--gpu", "1", "--concurrency", "4"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    name = f"retrieve-gpu1@{socket.gethostname()}"
    app = make_app(own_redis)
    try:
        replies: list = []
        deadline = time.monotonic() + 180
        while not replies and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            replies = app.control.broadcast("vars_worker", reply=True, timeout=1.0, destination=[name])
        assert replies, f"no reply from {name}:\n{(tmp_path / 'worker.log').read_text()}"
        info = replies[0][name]
        assert info["cuda_visible_devices"] == "1" and info["gpu"] == "1"
        assert info["stage"] == "retrieve" and info["pool"] == "threads"
        assert info["pid"] == proc.pid
        assert info["cuda_initialized"] is False
        queues = app.control.inspect(destination=[name], timeout=5.0).active_queues()
        assert [q["name"] for q in queues[name]] == ["vars.retrieve.live", "vars.retrieve"]
        # Every worker on this Redis answered: this one, and no other consumes anything.
        assert list(app.control.inspect(timeout=2.0).active_queues()) == [name]
    finally:
        stop_processes([proc.pid])
        proc.wait(10)
        log.close()


@pytest.mark.integration
def test_a_worker_whose_model_cannot_load_stops_at_once_naming_it(own_redis, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VARS_", "CUDA_", "NVIDIA_"))}
    env.update(
        REDIS_URL=own_redis, VARS_HOME=str(tmp_path),
        VARS_EMBEDDER__KIND="transformers", VARS_EMBEDDER__PATH=str(tmp_path / "no-model"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "worker", "--stage", "retrieve"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: the retrieve worker cannot load its models" in proc.stderr
    assert "no-model" in proc.stderr
