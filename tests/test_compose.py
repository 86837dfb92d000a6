"""docker-compose.yml: valid for docker-compose and the Compose Specification's schema, a
pinned worker per stage, GPU reservations by id, and a deploy config that loads."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from jsonschema import Draft4Validator

from vars_core.config import load_config
from vars_core.types import STAGES
from workers.pool import choose_pool

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).parent / "data" / "compose_spec.json"  # see compose_spec.README.md
DEPLOY_CONFIG = ROOT / "ops" / "vars.gpu.toml"
SERVICES = {
    "redis", "vllm-user", "vllm-agent", "vllm-judge", "vllm-embed", "vllm-rerank",
    *(f"worker-{stage}" for stage in STAGES),
    "gateway", "scheduler", "prometheus", "grafana", "flower",
}


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def interpolate(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], value)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<: *anchor) resolved


@pytest.fixture(scope="module")
def services(raw) -> dict:
    return raw["services"]


def reservations(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_docker_compose_config_accepts_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose); the schema test still runs")
    proc = subprocess.run(
        [binary, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "is not set" not in proc.stderr, proc.stderr  # every ${VAR} has a value
    resolved = yaml.safe_load(proc.stdout)
    assert set(resolved["services"]) == SERVICES
    assert resolved["services"]["vllm-user"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0", "1"]
    assert resolved["services"]["worker-retrieve"]["command"] == "vars worker --stage retrieve --gpu 3 --concurrency 16"
    errors = list(Draft4Validator(json.loads(SCHEMA.read_text())).iter_errors(resolved))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_the_file_matches_the_compose_specification_schema(raw):
    validator = Draft4Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # The schema has teeth: a misspelt reservation key and an unknown service key fail.
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["vllm-agent"]["deploy"]["resources"]["reservations"]["devices"][0]["device_idz"] = ["2"]
    broken["services"]["redis"]["gpus"] = "all"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_variable_has_a_value_in_env_example_and_none_is_unused():
    used = set(re.findall(r"\$\{(\w+)\}", COMPOSE.read_text()))
    assert used == set(env_example())


def test_the_services_are_all_there_and_every_stage_has_a_pinned_worker(services):
    assert set(services) == SERVICES
    env = env_example()
    for stage in STAGES:
        service = services[f"worker-{stage}"]
        argv = shlex.split(service["command"])
        assert argv[:4] == ["vars", "worker", "--stage", stage]
        gpu = argv[argv.index("--gpu") + 1]
        assert [interpolate(gpu, env)] == [interpolate(i, env) for i in reservations(service)[0]["device_ids"]]
        assert int(interpolate(argv[argv.index("--concurrency") + 1], env)) >= 1
        assert service["environment"]["VARS_METRICS_PORT"] == "9100"
        assert service["environment"]["REDIS_URL"] == "${REDIS_URL}"
        assert "./ops/vars.gpu.toml:/etc/vars/vars.toml:ro" in service["volumes"]
        assert service["environment"]["VARS_CONFIG"] == "/etc/vars/vars.toml"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert shlex.split(services["gateway"]["command"]) == ["vars", "gateway", "--host", "0.0.0.0", "--port", "8000"]
    assert shlex.split(services["scheduler"]["command"]) == ["vars", "scheduler", "--metrics-port", "9100"]


def test_every_gpu_service_reserves_its_gpus_by_id(services):
    gpu_services = [name for name in services if name.startswith(("vllm-", "worker-"))]
    for name in gpu_services:
        devices = reservations(services[name])
        assert len(devices) == 1, name
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
        assert devices[0]["device_ids"], name
    for name in set(services) - set(gpu_services):
        assert not reservations(services[name]), name
    user = services["vllm-user"]
    assert "--tensor-parallel-size=2" in user["command"] and len(reservations(user)[0]["device_ids"]) == 2


def test_the_example_layout_is_four_gpus_and_no_gpu_is_oversubscribed(services):
    env = env_example()
    memory: dict[str, float] = defaultdict(float)
    for name, service in services.items():
        if not name.startswith("vllm-"):
            continue
        share = next(a for a in service["command"] if a.startswith("--gpu-memory-utilization="))
        for gpu in reservations(service)[0]["device_ids"]:
            memory[interpolate(gpu, env)] += float(interpolate(share.split("=", 1)[1], env))
    assert sorted(memory) == ["0", "1", "2", "3"]
    assert all(total <= 0.95 for total in memory.values()), dict(memory)


def test_redis_persists_every_second_and_never_evicts(services):
    settings = dict(
        line.split(None, 1) for line in (ROOT / "ops/redis/redis.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction"
    redis = services["redis"]
    assert redis["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "./ops/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]


def test_every_mounted_path_of_the_repository_exists(services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
    assert (ROOT / "ops/prometheus/prometheus.yml").exists()
    assert "./ops/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = services["grafana"]["volumes"]
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./ops/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana


def test_the_deploy_config_loads_and_points_at_the_compose_model_servers(services):
    config = load_config(DEPLOY_CONFIG, environ={})
    urls = {
        "agent": config.agent.base_url,
        "simulator": config.simulator_llm.base_url,
        "judge": config.judge_llm.base_url,
        "extractor": config.extractor_llm.base_url,
        "embedder": config.embedder.base_url,
        "reranker": config.reranker.base_url,
    }
    for role, url in urls.items():
        host = urlparse(url)
        assert host.hostname in services and host.hostname.startswith("vllm-"), (role, url)
        assert host.port == 8000 and f"--port={host.port}" in services[host.hostname]["command"], (role, url)
    served = {
        name: next(a.split("=", 1)[1] for a in s["command"] if a.startswith("--served-model-name="))
        for name, s in services.items() if name.startswith("vllm-")
    }
    assert served[urlparse(config.agent.base_url).hostname] == config.agent.model
    assert served[urlparse(config.simulator_llm.base_url).hostname] == config.simulator_llm.model
    assert served[urlparse(config.embedder.base_url).hostname] == config.embedder.model
    assert served[urlparse(config.reranker.base_url).hostname] == config.reranker.model
    assert (config.judge, config.extractor, config.simulator) == ("llm", "llm", "llm")
    # Every stage's worker starts with it: threads, nothing in process, nothing refused.
    for stage in STAGES:
        choice = choose_pool(stage, config, "auto", concurrency=16)
        assert (choice.pool, choice.batcher) == ("threads", False), (stage, choice)
