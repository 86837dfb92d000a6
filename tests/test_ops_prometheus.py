"""ops/: the Prometheus config and rules are valid and their alerts fire when they should;
a real Prometheus scraping a real pipeline sees exactly the sessions the scheduler
counted, and every dashboard and rule query runs against it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from scheduler.campaigns import launch
from scheduler.spec import parse_spec
from scheduler.status import campaign_records
from tests.pipeline_harness import Pipeline
from vars_core.campaign import progress
from vars_core.engine import Engine
from vars_core.types import STAGES

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "vars.json"
DATASOURCE = ROOT / "ops" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
NO_PROMETHEUS = "needs the prometheus binary (Debian package `prometheus`)"

# Grafana's own variables, as Grafana would expand them for a 1-hour view; the
# dashboard's template variables at "All".
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$campaign": ".*",
    "$method": ".*",
}

SPEC = """
name = "prom"
methods = ["vanilla", "rag_vector"]
profiles = 2
sessions = 2
max_turns = 3
datasets = ["mmlu"]
seed = 5
"""


def _panels(panels: list[dict]) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out += _panels(panel.get("panels", []))  # panels inside collapsed rows
    return out


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in _panels(dashboard()["panels"]) for t in p.get("targets", []) if t.get("expr")]


def as_promql(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


# --------------------------------------------------------------------- static checks


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package `prometheus`)")
def test_promtool_accepts_the_config_and_rules_and_the_alerts_fire_as_specified():
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", *sorted(str(p) for p in (PROMETHEUS_DIR / "rules").glob("*.yml"))],
        ["test", "rules", "tests/vars_test.yml"],
    ):
        done = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_the_dashboard_has_the_panels_the_issue_lists():
    board = dashboard()
    titles = [p["title"] for p in _panels(board["panels"])]
    for wanted in (
        "Sessions/hr by method",
        "Turns/s by method",
        "Stage latency p50 / p95",
        "Queue depth",
        "Tokens/s by role",
        "Reward mix",
        "Enforcements per session by session index",
        "Failures by stage and reason",
    ):
        assert wanted in titles
    uid = next(line.split(":", 1)[1].strip() for line in DATASOURCE.read_text().splitlines() if "uid:" in line)
    for panel in _panels(board["panels"]):
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
    assert all("vars_" in q or q.startswith("up") for q in dashboard_queries())
    compose = ROOT / "docker-compose.yml"
    if compose.exists():  # every scraped service is one compose defines
        text = compose.read_text()
        config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
        for service in [line.split("[", 2)[2].split("]")[0] for line in config.splitlines() if "names: [" in line]:
            assert f"\n  {service}:" in text, f"prometheus.yml scrapes {service}, which docker-compose.yml lacks"


# --------------------------------------------------------------------- a live scrape


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    ports = [s.getsockname()[1] for s in socks]
    for sock in socks:
        sock.close()
    return ports


class PrometheusServer:
    def __init__(self, port: int, config: Path, data: Path, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            ],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def query(self, expr: str) -> dict:
        try:
            return self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:  # 400/422: the query did not run
            return json.loads(exc.read())

    def value(self, expr: str) -> float:
        body = self.query(expr)
        assert body["status"] == "success", (expr, body)
        result = body["data"]["result"]
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def targets(self) -> list[dict]:
        return self.get("/api/v1/targets")["data"]["activeTargets"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _scraped_at(target: dict) -> float:
    stamp = target["lastScrape"]  # RFC 3339 with nanoseconds
    head, _, rest = stamp.partition(".")
    zone = rest.lstrip("0123456789") if rest else stamp[19:]
    return datetime.fromisoformat(head + (zone.replace("Z", "+00:00") or "+00:00")).timestamp()


def _wait(predicate, timeout_s: float, what: str, diagnostics=lambda: "") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{diagnostics()}")


def _scrape_config(worker_ports: dict[str, int], scheduler_port: int) -> dict:
    jobs = [
        {"job_name": f"worker-{stage}", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        for stage, port in worker_ports.items()
    ]
    jobs.append({"job_name": "scheduler", "static_configs": [{"targets": [f"127.0.0.1:{scheduler_port}"]}]})
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules" / "*.yml")],
        "scrape_configs": jobs,
    }


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS)
def test_prometheus_counts_the_sessions_the_scheduler_counted(tmp_path):
    ports = _free_ports(len(STAGES) + 2)
    worker_ports = dict(zip(STAGES, ports, strict=False))
    scheduler_port, prometheus_port = ports[-2], ports[-1]
    metrics_env = {"VARS_METRICS_ADDR": "127.0.0.1"}
    pipeline = Pipeline(
        tmp_path / "home", concurrency=1,
        stage_env=lambda stage: {**metrics_env, "VARS_METRICS_PORT": str(worker_ports[stage])},
    )
    config = tmp_path / "prometheus.json"  # JSON is YAML
    config.write_text(json.dumps(_scrape_config(worker_ports, scheduler_port)))
    prometheus = daemon = None
    try:
        pipeline.start()
        daemon = subprocess.Popen(
            [
                sys.executable, "-m", "scheduler.cli", "scheduler", "--metrics-port", str(scheduler_port),
                "--metrics-addr", "127.0.0.1", "--sweep-interval", "2", "--stalled-after", "600",
            ],
            env={**os.environ, "REDIS_URL": pipeline.url}, cwd=ROOT,
            stdout=(tmp_path / "scheduler.log").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        prometheus = PrometheusServer(prometheus_port, config, tmp_path / "tsdb", tmp_path / "prometheus.log")

        def logs() -> str:
            texts = [p.read_text(errors="replace")[-3000:] for p in (tmp_path / "scheduler.log", tmp_path / "prometheus.log")]
            return pipeline.logs() + "\n--- scheduler\n" + texts[0] + "\n--- prometheus\n" + texts[1]

        def all_up() -> bool:
            assert pipeline.alive() and daemon.poll() is None, logs()
            try:
                targets = prometheus.targets()
            except OSError:
                return False
            return len(targets) == len(STAGES) + 1 and all(t["health"] == "up" for t in targets)

        _wait(all_up, 90, "every worker and the scheduler to answer scrapes", logs)

        store = pipeline.store()
        plan = launch(pipeline.app(), Engine(), store, parse_spec(SPEC))
        _wait(lambda: sum(progress(store, plan.campaign_id)) >= plan.total_sessions, 150, "the campaign", logs)
        # Acked after the task returned, so after it counted: then the next scrape is final.
        _wait(pipeline.queues_empty, 30, "the queues to drain", logs)
        ended = time.time()
        _wait(lambda: all(_scraped_at(t) > ended + 0.1 for t in prometheus.targets()), 30, "a final scrape", logs)

        done, failed = progress(store, plan.campaign_id)
        records = campaign_records(store, plan.campaign_id)
        assert (done, failed) == (plan.total_sessions, 0)
        assert prometheus.value("sum(vars_sessions_completed_total)") == done
        # Counted on the commit that was made: the same totals as the session records.
        assert prometheus.value("sum(vars_turns_total)") == sum(r.turns for r in records)
        assert prometheus.value("sum(vars_enforcements_total)") == sum(r.enforcements for r in records)
        assert prometheus.value('sum(vars_llm_tokens_total{role="agent",kind="completion"})') == sum(
            r.agent_tokens for r in records
        )
        assert prometheus.value('sum(vars_llm_tokens_total{role="user"})') == sum(r.user_tokens for r in records)
        assert prometheus.value("sum(vars_reward_total)") > 0
        assert prometheus.value("count(count by (stage) (vars_stage_seconds_count))") == len(STAGES)
        # The scheduler's view of Redis.
        cid = plan.campaign_id
        assert prometheus.value(f'vars_campaign_sessions{{campaign="{cid}",status="done"}}') == done
        assert prometheus.value(f'vars_campaign_state{{campaign="{cid}",state="finished"}}') == 1
        assert prometheus.value(f'vars_inflight_lanes{{campaign="{cid}"}}') == 0
        assert prometheus.value("count(vars_queue_depth)") == 2 * len(STAGES)
        assert prometheus.value("sum(vars_queue_depth)") == 0
        assert prometheus.value("vars_deadletter_length") == 0
        assert prometheus.value('sum(vars_sweeps_total{result="ok"})') >= 1

        # Every dashboard query, template variable and rule runs.
        queries = [as_promql(q) for q in dashboard_queries()]
        for expr in queries:
            body = prometheus.query(expr)
            assert body["status"] == "success", (expr, body)
        for variable in dashboard()["templating"]["list"]:
            metric, label = variable["definition"][len("label_values(") : -1].split(", ")
            body = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
            assert body["status"] == "success" and body["data"], variable
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) >= 5
        for rule in rules:
            body = prometheus.query(rule["query"])
            assert body["status"] == "success", (rule["name"], body)
        _wait(
            lambda: all(r["health"] == "ok" for g in prometheus.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]),
            10, "every rule evaluated without error", logs,
        )
        # Panels that must show data after a campaign.
        for expr in queries:
            if "vars_sessions_completed_total" in expr or "vars_stage_seconds_bucket" in expr:
                assert prometheus.query(expr)["data"]["result"], expr
    finally:
        if prometheus is not None:
            prometheus.stop()
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=15)
        pipeline.stop()
