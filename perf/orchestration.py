"""The orchestration ceiling: sessions/hr and stage tasks/s by worker processes, and the queue hop.

Scripted campaigns (the scripted user and agent, keyword judge, rule extractor, the real
all-MiniLM-L6-v2 embedder) run on the real pipeline: an embedded Redis and real Celery
worker processes (`vars worker`), P processes per stage (6 P in all), each with its default
threads pool. Nothing in the scripted world waits on a model server, so what is measured is
what the orchestration and the in-process work cost, the ceiling under any real backend.

For each P, on fresh workers:

- *first pass*: the heavy campaign once, every worker's embedder text cache empty;
- *light*: a campaign whose lanes run one at a time (``parallelism = 1``), so one event is
  in flight at a time: its queue wait is the hop's own cost;
- *heavy* (``--reps`` times): the same campaign again (same seed: the same profiles and
  problems, new users), every lane started at launch, every stage queue deep; texts
  embedded before come from the embedder's cache, as in a long campaign over a fixed
  problem bank.

Sessions/hr and stage tasks/s are counted from launch to the last session's end (the
launch, in this process, included). A stage task is one run of one stage for one turn (the
hop audit each task appends, `workers/tasks.py`). The queue wait of each task is its start
minus its event's send time (`StageTask.sent_at`), in the same audit. CPU seconds per
process come from /proc. As a reference, the same heavy campaign also runs in this process
through the in-process runner (`vars_core.runner`, the same stage handlers with no Redis and
no queues).

    python -m perf.orchestration                  # writes its section of docs/performance.md
    python -m perf.orchestration --procs 1 --reps 1 --out ''    # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perf import markdown

START = "<!-- perf.orchestration: start -->"
END = "<!-- perf.orchestration: end -->"
METHODS = ["vanilla", "contextual", "reflection", "all_memory", "rag", "rag_vector"]
DATASETS = ["math-500", "logiqa", "mmlu", "medqa"]
TICK = os.sysconf("SC_CLK_TCK")
SEED = 100  # every heavy campaign: the same profiles and problems


@dataclass
class Run:
    kind: str  # light | heavy | in-process
    procs: int  # worker processes per stage (0: in-process)
    sessions: int
    seconds: float
    tasks: int = 0
    waits_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # stage (or "redis") -> CPU seconds
    redis_calls: int = 0  # commands the server ran (INFO commandstats), the bench's polling excluded
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after

    @property
    def sessions_per_hr(self) -> float:
        return self.sessions / self.seconds * 3600

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Workers:
    """P `vars worker` processes per stage on one Redis, started and stopped together."""

    def __init__(self, url: str, home: Path, per_stage: int, concurrency: int) -> None:
        from scheduler.local import worker_command
        from vars_core.types import STAGES

        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        env = {**os.environ, "REDIS_URL": url, "VARS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        (home / "logs").mkdir(parents=True, exist_ok=True)
        for i in range(per_stage):
            for stage in STAGES:
                log = home / "logs" / f"worker-{stage}-{i}.log"
                proc = subprocess.Popen(
                    worker_command(stage, concurrency), env=env, stdin=subprocess.DEVNULL,
                    stdout=log.open("ab"), stderr=subprocess.STDOUT,
                )
                self.procs.append((stage, proc, log))

    def wait_ready(self, timeout_s: float = 600.0) -> float:
        """Seconds until every worker logged that it is ready (consuming)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            dead = [stage for stage, proc, _ in self.procs if proc.poll() is not None]
            if dead:
                raise RuntimeError(f"worker(s) for {', '.join(dead)} exited; see {self.procs[0][2].parent}")
            if all(" ready." in log.read_text(errors="replace") for _, _, log in self.procs):
                return time.monotonic() - started
            time.sleep(0.5)
        raise RuntimeError(f"workers not ready after {timeout_s:.0f} s")

    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, proc, _ in self.procs:
            out[stage] = out.get(stage, 0.0) + cpu_seconds(proc.pid)
        return out

    def rss_mib(self) -> float:
        return sum(rss_mib(proc.pid) for _, proc, _ in self.procs)

    def stop(self) -> None:
        from scheduler.local import stop_processes

        stop_processes([proc.pid for _, proc, _ in self.procs])
        for _, proc, _ in self.procs:
            proc.wait(timeout=10)


def campaign_spec(name: str, profiles: int, sessions: int, seed: int, parallelism: int | None):
    from scheduler.spec import CampaignSpec

    return CampaignSpec(
        name=name, methods=METHODS, profiles=profiles, sessions=sessions, max_turns=8,
        datasets=DATASETS, seed=seed, parallelism=parallelism,
    )


def run_campaign(app, engine, store, spec, workers: Workers, redis_pid: int | None, kind: str, procs: int) -> Run:
    from scheduler.campaigns import launch
    from vars_core.campaign import finished_session_ids, progress
    from workers.tasks import hops_key

    client = store.backend.client  # RedisBackend
    load_before = os.getloadavg()[0]
    cpu_before = {**workers.cpu(), "redis": cpu_seconds(redis_pid) if redis_pid else 0.0}
    client.config_resetstat()
    started = time.perf_counter()
    plan = launch(app, engine, store, spec)
    polls = 0
    while sum(progress(store, plan.campaign_id)) < plan.total_sessions:
        polls += 1
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    cpu_after = {**workers.cpu(), "redis": cpu_seconds(redis_pid) if redis_pid else 0.0}
    calls = sum(v["calls"] for v in client.info("commandstats").values())
    calls -= 2 * (polls + 1) + 2  # progress() is two GETs per poll; INFO and CONFIG RESETSTAT
    done, failed = progress(store, plan.campaign_id)
    if failed:
        raise RuntimeError(f"{failed} of {plan.total_sessions} sessions failed in {plan.campaign_id}")
    pipe = client.pipeline(transaction=False)
    for sid in finished_session_ids(store, plan.campaign_id):
        pipe.lrange(hops_key(store, sid), 0, -1)
    hops = [h.decode().split("|") for lst in pipe.execute() for h in lst]
    waits = [float(h[4]) for h in hops if len(h) > 4 and h[4]]
    return Run(
        kind, procs, done, seconds, len(hops), waits,
        cpu_s={k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        redis_calls=calls,
        load=(load_before, os.getloadavg()[0]),
    )


def in_process(engine, profiles: int, sessions: int, seed: int, kind: str = "in-process") -> Run:
    """The same heavy campaign through the in-process runner: no Redis, no queues."""
    from scheduler.profiles import campaign_profiles
    from vars_core.problems import load_problems
    from vars_core.runner import run_lane
    from vars_core.store import StateStore
    from vars_core.types import STAGES

    store = StateStore()
    problems = load_problems(DATASETS)
    people = campaign_profiles(profiles, seed)
    load_before, cpu_before = os.getloadavg()[0], cpu_seconds(os.getpid())
    started = time.perf_counter()
    count = 0
    for person in people:
        for method in METHODS:
            count += len(run_lane(engine, store, f"inproc-{seed}", person, method, sessions, problems, seed, 8))
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(os.getpid()) - cpu_before
    # stage commits (markers "done:<turn>:<stage>"), as the pipeline's stage tasks
    tasks = sum(1 for key in store.backend.scan("vars:sess:") if key.rsplit(":", 1)[-1] in STAGES and ":done:" in key)
    return Run(kind, 0, count, seconds, tasks, cpu_s={"runner": cpu}, load=(load_before, os.getloadavg()[0]))


def measure(procs_list: list[int], reps: int, profiles: int, sessions: int, concurrency: int) -> tuple[list[Run], dict]:
    from scheduler.embedded_redis import EmbeddedRedis
    from vars_core.engine import Engine
    from vars_core.store import StateStore
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend
    from workers.app import make_app

    runs: list[Run] = []
    info: dict = {"startup_s": {}, "rss_mib": {}}
    engine = Engine()  # launches the campaigns
    # The in-process reference: the first pass fills the embedder's text cache (cold),
    # the next ones find the same problems and notes there (warm), as the workers do.
    runs.append(in_process(Engine(), profiles, sessions, SEED, kind="cold"))
    for rep in range(reps):
        runs.append(in_process(Engine(), profiles, sessions, SEED))
        print(f"in-process rep {rep}: {runs[-1].sessions_per_hr:,.0f} sessions/hr", flush=True)
    for procs in procs_list:
        home = Path(tempfile.mkdtemp(prefix=f"vars-orch-p{procs}-"))
        redis = EmbeddedRedis(home=home)
        url = redis.start()
        workers: Workers | None = None
        try:
            workers = Workers(url, home, procs, concurrency)
            info["startup_s"][procs] = workers.wait_ready()
            app, store = make_app(url), StateStore(RedisBackend(connect(url)))
            pid = redis.pid()
            # The first pass: models warm, every worker's text cache empty.
            spec = campaign_spec(f"cold-p{procs}", profiles, sessions, SEED, None)
            runs.append(run_campaign(app, engine, store, spec, workers, pid, "cold", procs))
            print(f"P={procs} cold: {runs[-1].sessions_per_hr:,.0f} sessions/hr", flush=True)
            runs.append(run_campaign(app, engine, store, campaign_spec(f"light-p{procs}", 1, 3, 2, 1), workers, pid, "light", procs))
            print(f"P={procs} light: {runs[-1].tasks} tasks, wait p50 {np.percentile(runs[-1].waits_ms, 50):.1f} ms", flush=True)
            for rep in range(reps):
                spec = campaign_spec(f"heavy-p{procs}-r{rep}", profiles, sessions, SEED, None)
                runs.append(run_campaign(app, engine, store, spec, workers, pid, "heavy", procs))
                r = runs[-1]
                print(f"P={procs} heavy rep {rep}: {r.sessions_per_hr:,.0f} sessions/hr, {r.tasks_per_s:.0f} tasks/s, "
                      f"wait p50 {np.percentile(r.waits_ms, 50):.0f} ms, load {r.load[1]:.1f}", flush=True)
            info["rss_mib"][procs] = workers.rss_mib()
        finally:
            if workers is not None:
                workers.stop()
            redis.stop()
            shutil.rmtree(home, ignore_errors=True)
    return runs, info


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def section(runs: list[Run], info: dict, reps: int, profiles: int, sessions: int, concurrency: int) -> str:
    by_procs: dict[int, list[Run]] = {}
    cold: dict[int, Run] = {}
    for r in runs:
        if r.kind in ("heavy", "in-process"):
            by_procs.setdefault(r.procs, []).append(r)
        elif r.kind == "cold":
            cold[r.procs] = r
    order = sorted(by_procs, key=lambda procs: (procs == 0, procs))
    base = statistics.median(r.sessions_per_hr for r in by_procs[order[0]])
    rows = []
    for procs in order:
        rs = by_procs[procs]
        sph = [r.sessions_per_hr for r in rs]
        tps = statistics.median(r.tasks_per_s for r in rs)
        waits = [w for r in rs for w in r.waits_ms]
        label = "in-process runner (1 process)" if procs == 0 else f"{procs} per stage ({6 * procs} processes)"
        wait = "" if procs == 0 else f"{_p(waits, 50):.0f} / {_p(waits, 99):.0f}"
        first = f"{cold[procs].sessions_per_hr:,.0f}" if procs in cold else ""
        loads = f"{min(r.load[0] for r in rs):.1f}-{max(r.load[1] for r in rs):.1f}"
        rows.append(
            f"| {label} | {statistics.median(sph):,.0f} ({min(sph):,.0f}-{max(sph):,.0f}) | {tps:,.0f} "
            f"| {statistics.median(sph) / base:.2f}x | {first} | {wait} | {loads} |"
        )
    light_rows = []
    for r in (r for r in runs if r.kind == "light"):
        light_rows.append(
            f"| {r.procs} per stage | {r.tasks} | {_p(r.waits_ms, 50):.1f} | {_p(r.waits_ms, 99):.1f} | {max(r.waits_ms):.1f} |"
        )
    cpu_rows = []
    for procs in order:
        rs = by_procs[procs]
        n = sum(r.sessions for r in rs)
        wall = sum(r.seconds for r in rs)
        total: dict[str, float] = {}
        for r in rs:
            for k, v in r.cpu_s.items():
                total[k] = total.get(k, 0.0) + v
        if procs == 0:
            cells = " | ".join([""] * (len(METHOD_STAGES) + 1))
            label = "in-process runner"
        else:
            cells = " | ".join(f"{total.get(k, 0.0) / n * 1000:.0f}" for k in (*METHOD_STAGES, "redis"))
            label = f"{procs} per stage"
        per_task = sum(total.values()) / sum(r.tasks for r in rs) * 1000
        cpu_rows.append(
            f"| {label} | {cells} | {sum(total.values()) / n * 1000:.0f} | {per_task:.1f} | {sum(total.values()) / wall:.2f} |"
        )
    calls = ", ".join(
        f"{procs} per stage {sum(r.redis_calls for r in by_procs[procs]) / sum(r.tasks for r in by_procs[procs]):.0f}"
        for procs in order if procs
    )
    startup = ", ".join(f"{p} per stage {s:.0f} s" for p, s in info["startup_s"].items())
    rss = ", ".join(f"{p} per stage {m / 1024:.1f} GiB" for p, m in info["rss_mib"].items())
    total_sessions = len(METHODS) * profiles * sessions
    return "\n".join(
        [
            START,
            "## Orchestration ceiling (`perf/orchestration.py`)",
            "",
            f"Scripted campaigns on the real pipeline: embedded Redis, `vars worker` processes ({concurrency}",
            "threads each), the scripted user and agent, keyword judge, rule extractor and the real",
            f"all-MiniLM-L6-v2 embedder. Heavy: {total_sessions} sessions per campaign (6 methods x {profiles}",
            f"profiles x {sessions} sessions, max 8 turns, {', '.join(DATASETS)}, seed {SEED}), every lane",
            "started at launch. Each configuration runs it once on fresh workers (*first pass*: every",
            f"worker's embedder text cache empty), then {reps} times more (the same profiles and problems,",
            "new users: texts embedded before come from the cache, as in a long campaign over a fixed",
            "problem bank); sessions/hr is the median of those (min-max). Light: 18 sessions run one",
            "lane at a time (`parallelism = 1`), one event in flight. A stage task is one stage of one",
            "turn; the queue wait is a task's start minus its event's send time (`StageTask.sent_at`).",
            f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores shared",
            "with other work (1-minute load average in the table; it counts the pipeline's own",
            f"processes too), {time.strftime('%Y-%m-%d')}.",
            "",
            "| workers | sessions/hr | stage tasks/s | vs first row | first pass, sessions/hr | queue wait p50 / p99 (ms) | load avg |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Queue hop under light load (one event in flight):",
            "",
            "| workers | tasks | wait p50 (ms) | wait p99 (ms) | max (ms) |",
            "|---|---:|---:|---:|---:|",
            *light_rows,
            "",
            "CPU per session in the warm heavy runs, in ms, by stage (all processes of a stage; redis:",
            "the server; the bench process that launches and polls is not counted), CPU per stage",
            "task, and the cores that CPU kept busy on average:",
            "",
            "| workers | " + " | ".join(METHOD_STAGES) + " | redis | total per session | per task | cores busy |",
            "|---|" + "---:|" * (len(METHOD_STAGES) + 4),
            *cpu_rows,
            "",
            "Redis commands per stage task (all clients, launch included; commands run inside Lua",
            f"scripts and MULTI blocks counted): {calls}. Worker start-up (until every process is",
            f"consuming): {startup}. Worker memory (RSS, all processes, after the runs): {rss}.",
            "",
            *findings(by_procs),
            END,
        ]
    ) + "\n"


def findings(by_procs: dict[int, list[Run]]) -> list[str]:
    """What the tables say, with their figures."""

    def per(procs: int, what: str) -> float:
        rs = by_procs[procs]
        cpu = sum(sum(r.cpu_s.values()) for r in rs)
        if what == "busy":
            return cpu / sum(r.seconds for r in rs)
        return cpu / sum(r.sessions if what == "session" else r.tasks for r in rs) * 1000

    pipes = sorted(p for p in by_procs if p)
    one, most = pipes[0], pipes[-1]
    tasks_per_session = sum(r.tasks for r in by_procs[one]) / sum(r.sessions for r in by_procs[one])
    ceiling = (os.cpu_count() or 1) / per(one, "session") * 1000 * 3600
    lines = [
        f"This machine saturates at {one} process per stage: the CPU is the bound. The pipeline's",
        f"processes kept {per(one, 'busy'):.1f} of the {os.cpu_count()} cores busy; other work had the rest (the load average).",
        f"More processes add no core: a stage task then costs more CPU ({per(one, 'task'):.1f} ms at {one} per stage,",
        f"{per(most, 'task'):.1f} ms at {most}: more processes polling, switching and missing their caches), start",
        "more slowly, each hold their own copy of the models and their own text cache (the first",
        "pass fills every copy), and wait longer for a core. On a machine like this one, one",
        "process per stage with threads (`--concurrency`) is the setting; processes pay off with",
        "cores to put them on.",
        "",
        "The orchestration costs far more than the scripted world's work: a warm session takes",
        f"{per(0, 'session'):.0f} ms of CPU in the in-process runner and {per(one, 'session'):.0f} ms through the queues, about",
        f"{per(one, 'task') - per(0, 'task'):.1f} ms more per stage task ({tasks_per_session:.0f} tasks per session). A profile of the judge",
        "worker (cProfile, thread CPU time, solo pool, one campaign; not part of this script) puts",
        "about two thirds of a task's CPU in Celery and kombu (receiving, acknowledging and",
        "publishing a message: `send_task` alone about a third) and one third in the stage (its",
        "reads, its idempotent commit, the hop audit). With every core of this machine to itself",
        f"the pipeline would top out near {round(ceiling, -3):,.0f} sessions/hr of this campaign. With LLM backends a",
        "stage waits hundreds of ms per call, so these few ms per task do not bound throughput; the",
        "queue hop's own cost is the light-load wait, a few ms, and under a deep queue the wait is",
        "queueing behind other sessions' events.",
    ]
    return lines


METHOD_STAGES = ("simulate", "judge", "update", "extract", "retrieve", "generate")


def main(argv: list[str] | None = None) -> None:
    # SIGTERM ends the run through its finally blocks, which stop the workers and Redis.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4], help="worker processes per stage")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profiles", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2, help="threads per worker process")
    parser.add_argument("--out", default="docs/performance.md", help="Markdown file to write into ('' to print only)")
    args = parser.parse_args(argv)
    runs, info = measure(args.procs, args.reps, args.profiles, args.sessions, args.concurrency)
    text = section(runs, info, args.reps, args.profiles, args.sessions, args.concurrency)
    print(text)
    if args.out:
        markdown.write_section(Path(args.out), text, START, END)


if __name__ == "__main__":
    sys.exit(main())
