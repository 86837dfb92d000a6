"""How close does a campaign come to its LLM backend's limit, and how does the event
pipeline compare with the lockstep design of the reference runner?

Every LLM role of the campaign (agent, simulated user, judge, extractor) calls one
``perf.capacity_server`` (one vLLM-like instance: K sequences at once, prefill and decode
times per token, log-normal output lengths); the scripted world decides what is said
(``perf/capacity_engine.py``). Each repetition runs the same sessions twice, in
alternating order:

- *pipeline*: a campaign through the real pipeline: an embedded Redis and one ``vars
  worker`` process per stage (``perf.capacity_worker``), Celery queues, ``parallelism``
  lanes in flight;
- *lockstep*: ``perf.lockstep``, batches of ``batch`` sessions advancing turn by turn,
  stage by stage, in one process.

For each run: sessions/hr over the whole run (launch to last session end), the server's
capacity bound for the run's own token mix (``3600 K / slot-seconds per session``, see
``perf/capacity_server.py``), their ratio, and where the server's idle slot-time went.

    python -m perf.capacity_campaign --runs 3 --diagnose   # ~1 hour; writes its section of docs/performance.md
    python -m perf.capacity_campaign --render results/capacity/capacity-<stamp>.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import msgspec

from perf import markdown
from perf.capacity_server import Capacity, RequestRecord, bound_sessions_per_hour

START, END = "<!-- perf.capacity: start -->", "<!-- perf.capacity: end -->"
STAGES = ("simulate", "judge", "update", "extract", "retrieve", "generate")


class Settings(msgspec.Struct, frozen=True):
    profiles: int = 192
    sessions: int = 1  # per lane
    method: str = "rag_vector"
    max_turns: int = 9  # sessions end after 2 to 10 simulated-user steps
    datasets: tuple[str, ...] = ("math-500", "logiqa", "mmlu", "medqa")
    seed: int = 11
    parallelism: int | None = None  # pipeline: lanes in flight (None: all at launch)
    batch: int = 192  # lockstep: sessions per batch
    barrier: str = "stage"
    slots: int = 64
    time_scale: float = 1.0
    # Worker threads per stage: many where a stage waits on the server.
    concurrency: dict[str, int] = msgspec.field(
        default_factory=lambda: {"simulate": 64, "judge": 64, "update": 8, "extract": 64, "retrieve": 16, "generate": 64}
    )
    max_concurrency: int | None = None  # the roles' client cap; None: the config default


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    profile_id: str
    session_index: int
    turns: int
    enforcements: int
    success: bool
    timeout: bool
    failed: bool


class Run(msgspec.Struct):
    mode: str
    started: float
    finished: float
    outcomes: list[Outcome]
    requests: list[RequestRecord]
    ends: list[float]  # when each session ended (wall clock)

    @property
    def wall_s(self) -> float:
        return self.finished - self.started


class Figures(msgspec.Struct):
    mode: str
    sessions: int
    failed: int
    wall_s: float
    sessions_per_hour: float
    slot_s_per_session: float
    bound_per_hour: float
    efficiency: float
    requests: int
    mean_in_service: float
    idle_before_drain: float  # share of K x wall: slots idle while K or more sessions were unfinished
    idle_in_drain: float  # share of K x wall: slots idle once fewer than K sessions were left
    drain_s: float
    overrun: float  # actual slot time / modelled - 1 (the server's own timer lag)
    no_call_s: float  # wall time with no request at the server at all
    load: float  # 1-minute load average of the machine at the run's end


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(capacity: Capacity, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "perf.capacity_server", "--port", str(port), "--slots", str(capacity.slots),
        "--time-scale", str(capacity.time_scale), "--seed", str(capacity.seed),
    ]
    proc = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the capacity server exited; see {log}")
        try:
            httpx.get(url + "/healthz", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the capacity server did not start")


def reset_stats(url: str) -> None:
    httpx.post(url + "/stats/reset", timeout=10).raise_for_status()


def server_requests(url: str) -> list[RequestRecord]:
    stats = httpx.get(url + "/stats", timeout=30).json()
    return msgspec.convert(stats["requests"], list[RequestRecord])


# --------------------------------------------------------------------------- pipeline


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """A flat TOML file: scalars, then one level of tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")


class PipelineStack:
    """An embedded Redis and one paced worker process per stage."""

    def __init__(self, home: Path, server_url: str, settings: Settings) -> None:
        from scheduler.embedded_redis import EmbeddedRedis

        self.home, self.settings = home, settings
        self.redis = EmbeddedRedis(home=home)
        self.config_path = home / "paced.toml"
        from perf.capacity_engine import paced_config

        write_toml(self.config_path, paced_config(server_url, settings.max_concurrency))
        self.procs: list[subprocess.Popen] = []
        self.url = ""

    def __enter__(self) -> PipelineStack:
        self.url = self.redis.start()
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "REDIS_URL": self.url, "VARS_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        for stage in STAGES:
            command = [
                sys.executable, "-m", "perf.capacity_worker", "--stage", stage,
                "--concurrency", str(self.settings.concurrency[stage]), "--loglevel", "WARNING",
            ]
            log = (logs / f"worker-{stage}.log").open("ab")
            self.procs.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            )
        from vars_core.store import StateStore
        from vars_core.store.connect import connect
        from vars_core.store.redis_backend import RedisBackend
        from workers.app import make_app

        self.app = make_app(self.url)
        self.store = StateStore(RedisBackend(connect(self.url)))
        return self

    def __exit__(self, *exc: object) -> None:
        from scheduler.local import stop_processes

        stop_processes([p.pid for p in self.procs])
        self.redis.stop()

    def check_alive(self) -> None:
        dead = [STAGES[i] for i, p in enumerate(self.procs) if p.poll() is not None]
        if dead:
            raise RuntimeError(f"worker(s) {', '.join(dead)} exited; see {self.home / 'logs'}")

    def run(self, spec: Any, timeout_s: float = 3600) -> tuple[str, float, float, list[float]]:
        """Launch a campaign and wait for its end: (campaign id, launched, finished, and
        when each session ended, to the polling interval)."""
        from scheduler.campaigns import launch
        from vars_core.campaign import finished_at, finished_session_ids, launched_at
        from vars_core.engine import Engine

        plan = launch(self.app, Engine(), self.store, spec)
        cid, total = plan.campaign_id, plan.total_sessions
        deadline = time.monotonic() + timeout_s
        ends: list[float] = []
        while len(ends) < total:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cid}: {len(ends)}/{total} sessions after {timeout_s:.0f} s")
            time.sleep(0.1)
            ends += [time.time()] * len(finished_session_ids(self.store, cid, len(ends)))
        while (end := finished_at(self.store, cid)) is None:
            time.sleep(0.05)
        start = launched_at(self.store, cid)
        assert start is not None
        return cid, start, end, [min(t, end) for t in ends]

    def outcomes(self, campaign_id: str) -> list[Outcome]:
        from vars_core.campaign import finished_session_ids

        out = []
        for sid in finished_session_ids(self.store, campaign_id):
            record = self.store.session_record(sid)
            assert record is not None
            out.append(_outcome(record))
        return out


def _outcome(record: Any) -> Outcome:
    return Outcome(
        record.profile_id, record.session_index, record.turns, record.enforcements,
        bool(record.success), bool(record.timeout), record.status == "failed",
    )


def campaign_spec(settings: Settings, name: str, profiles: int | None = None, sessions: int | None = None):
    from scheduler.spec import CampaignSpec

    return CampaignSpec(
        name=name,
        methods=[settings.method],
        profiles=settings.profiles if profiles is None else profiles,
        sessions=settings.sessions if sessions is None else sessions,
        max_turns=settings.max_turns,
        datasets=list(settings.datasets),
        seed=settings.seed,
        parallelism=settings.parallelism,
    )


def run_pipeline(stack: PipelineStack, settings: Settings, server_url: str) -> Run:
    reset_stats(server_url)
    cid, start, end, ends = stack.run(campaign_spec(settings, "capacity"))
    return Run("pipeline", start, end, stack.outcomes(cid), server_requests(server_url), ends)


# --------------------------------------------------------------------------- lockstep


def run_lockstep_mode(settings: Settings, server_url: str) -> Run:
    from perf.capacity_engine import PacedEngine, paced_config
    from perf.lockstep import run_lockstep
    from scheduler.profiles import campaign_profiles
    from vars_core.config import load_config
    from vars_core.problems import load_problems
    from vars_core.store import StateStore

    # The reference runner sends a whole batch's calls at once: the client cap is the batch.
    engine = PacedEngine(load_config(paced_config(server_url, max(settings.batch, settings.max_concurrency or 0))))
    profiles = campaign_profiles(settings.profiles, settings.seed)
    problems = load_problems(list(settings.datasets))
    lanes = [(p, settings.method) for p in profiles]
    engine.embedder.embed(["warm up"])  # load the model before the clock starts
    reset_stats(server_url)
    ends: list[float] = []
    start = time.time()
    records = run_lockstep(
        engine, StateStore(), f"lockstep-{int(start)}", lanes, settings.sessions, problems,
        settings.seed, settings.max_turns, batch=settings.batch, barrier=settings.barrier,  # type: ignore[arg-type]
        on_end=lambda _: ends.append(time.time()),
    )
    end = time.time()
    engine.agent_llm.close()
    return Run("lockstep", start, end, [_outcome(r) for r in records], server_requests(server_url), ends)


# --------------------------------------------------------------------------- analysis


def analyse(run: Run, slots: int) -> Figures:
    n = len(run.outcomes)
    failed = sum(o.failed for o in run.outcomes)
    wall = run.wall_s
    slot_s = sum(r.service_s for r in run.requests)
    per_session = slot_s / max(1, n)
    rate = 3600.0 * n / wall
    bound = bound_sessions_per_hour(slots, per_session)
    held = [(max(r.started, run.started), min(r.finished, run.finished)) for r in run.requests]
    busy = sum(max(0.0, b - a) for a, b in held)
    # The drain: from when fewer than K sessions were left unfinished (the server cannot be
    # full then, whatever runs the sessions: a session has one call in flight at most).
    ends = sorted(run.ends)
    drain_from = ends[n - slots] if n >= slots and len(ends) == n else run.started
    busy_drain = sum(max(0.0, b - max(a, drain_from)) for a, b in held)
    capacity_s = slots * wall
    actual = sum(r.finished - r.started for r in run.requests)
    events = sorted([(a, 1) for a, b in held if b > a] + [(b, -1) for a, b in held if b > a])
    no_call, level, last = 0.0, 0, run.started
    for t, step in events:
        if level == 0:
            no_call += t - last
        level += step
        last = t
    no_call += run.finished - last if level == 0 else 0.0
    return Figures(
        mode=run.mode,
        sessions=n,
        failed=failed,
        wall_s=wall,
        sessions_per_hour=rate,
        slot_s_per_session=per_session,
        bound_per_hour=bound,
        efficiency=rate / bound,
        requests=len(run.requests),
        mean_in_service=busy / wall,
        idle_before_drain=(slots * (drain_from - run.started) - (busy - busy_drain)) / capacity_s,
        idle_in_drain=(slots * (run.finished - drain_from) - busy_drain) / capacity_s,
        drain_s=run.finished - drain_from,
        overrun=actual / slot_s - 1 if slot_s else 0.0,
        no_call_s=no_call,
        load=os.getloadavg()[0],
    )


def same_sessions(a: Run, b: Run) -> bool:
    def key(run: Run) -> list[Outcome]:
        return sorted(run.outcomes, key=lambda o: (o.profile_id, o.session_index))

    return key(a) == key(b)


def role_mix(run: Run) -> dict[str, tuple[int, float, float, float]]:
    """Per role: calls, mean prompt tokens, mean output tokens, slot-seconds per session."""
    n = max(1, len(run.outcomes))
    out = {}
    for role in sorted({r.role for r in run.requests}):
        rs = [r for r in run.requests if r.role == role]
        out[role] = (
            len(rs),
            statistics.fmean(r.prompt_tokens for r in rs),
            statistics.fmean(r.output_tokens for r in rs),
            sum(r.service_s for r in rs) / n,
        )
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profiles", type=int, default=defaults.profiles)
    parser.add_argument("--sessions", type=int, default=defaults.sessions)
    parser.add_argument("--max-turns", type=int, default=defaults.max_turns)
    parser.add_argument("--parallelism", type=int, default=defaults.parallelism, help="0: all lanes at once")
    parser.add_argument("--batch", type=int, default=None, help="lockstep batch (default: --parallelism)")
    parser.add_argument("--barrier", choices=["stage", "turn"], default="stage")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--slots", type=int, default=defaults.slots)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--concurrency", default="", help="per stage, e.g. simulate=64,judge=32")
    parser.add_argument("--modes", default="pipeline,lockstep")
    parser.add_argument("--results", type=Path, default=Path("results/capacity"))
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    parser.add_argument("--diagnose", action="store_true", help="also run the one-setting variants")
    parser.add_argument("--render", type=Path, help="only render this results file")
    args = parser.parse_args(argv)
    if args.render:
        section = render(msgspec.json.decode(args.render.read_bytes()))
        markdown.write_section(args.out, section, START, END)
        print(section)
        return
    concurrency = dict(Settings().concurrency)
    for item in filter(None, args.concurrency.split(",")):
        stage, _, n = item.partition("=")
        concurrency[stage.strip()] = int(n)
    settings = Settings(
        profiles=args.profiles, sessions=args.sessions, max_turns=args.max_turns,
        parallelism=args.parallelism or None, batch=args.batch or args.parallelism or args.profiles,
        barrier=args.barrier,
        slots=args.slots, time_scale=args.time_scale, concurrency=concurrency, max_concurrency=args.max_concurrency,
    )
    modes = args.modes.split(",")
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"capacity-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = measure(settings, args.runs, modes)
    path.write_bytes(msgspec.json.encode(document))
    if args.diagnose:
        document["variants"] = []
        for variant, variant_modes in diagnosis_variants(settings):
            document["variants"].append(measure(variant, 1, variant_modes))
            path.write_bytes(msgspec.json.encode(document))
    print(f"results: {path}", file=sys.stderr)
    if set(modes) == {"pipeline", "lockstep"}:
        section = render(document)
        markdown.write_section(args.out, section, START, END)
        print(section)


def diagnosis_variants(settings: Settings) -> list[tuple[Settings, list[str]]]:
    """One setting changed at a time: the old client cap; a parallelism bound at 1.5 K;
    the lockstep with a barrier per turn instead of per stage."""
    return [
        (msgspec.structs.replace(settings, max_concurrency=16), ["pipeline"]),
        (msgspec.structs.replace(settings, parallelism=settings.slots * 3 // 2), ["pipeline"]),
        (msgspec.structs.replace(settings, barrier="turn"), ["lockstep"]),
    ]


def measure(settings: Settings, runs: int, modes: list[str]) -> dict[str, Any]:
    capacity = Capacity(slots=settings.slots, time_scale=settings.time_scale, seed=settings.seed)
    load_before = os.getloadavg()[0]
    figures: list[dict[str, Any]] = []
    mixes: list[dict[str, Any]] = []
    checks: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="vars-capacity-") as tmp:
        home = Path(tmp)
        server, url = start_server(capacity, home / "server.log")
        try:
            stack = PipelineStack(home, url, settings) if "pipeline" in modes else None
            with stack if stack is not None else _Null():
                if stack is not None:  # warm-up: workers load their models, clients connect
                    stack.run(campaign_spec(settings, "warmup", profiles=8, sessions=1))
                for rep in range(runs):
                    order = modes if rep % 2 == 0 else list(reversed(modes))
                    done: dict[str, Run] = {}
                    for mode in order:
                        if mode == "pipeline":
                            assert stack is not None
                            done[mode] = run_pipeline(stack, settings, url)
                        else:
                            done[mode] = run_lockstep_mode(settings, url)
                        fig = analyse(done[mode], settings.slots)
                        figures.append({"run": rep + 1, **msgspec.to_builtins(fig)})
                        mixes.append({"run": rep + 1, "mode": mode, "mix": role_mix(done[mode]),
                                      "turns": sorted(Counter(o.turns for o in done[mode].outcomes).items())})
                        print(f"run {rep + 1} {mode}: {msgspec.json.encode(fig).decode()}", file=sys.stderr, flush=True)
                    if len(done) == 2:
                        checks.append(same_sessions(done["pipeline"], done["lockstep"]))
        finally:
            server.terminate()
            server.wait(timeout=10)
    return {
        "settings": msgspec.to_builtins(settings),
        "capacity": asdict(capacity),
        "figures": figures,
        "mixes": mixes,
        "same_sessions": checks,
        "when": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load": [load_before, os.getloadavg()[0]],
    }


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _variant_label(main: dict[str, Any], variant: dict[str, Any]) -> str:
    a, b = main["settings"], variant["settings"]
    parts = []
    if a["max_concurrency"] != b["max_concurrency"]:
        parts.append(f"client cap {b['max_concurrency'] or 'default'} per role")
    if a["parallelism"] != b["parallelism"]:
        parts.append(f"parallelism {b['parallelism'] or 'all lanes'}")
    if a["barrier"] != b["barrier"]:
        parts.append(f"{b['barrier']} barrier")
    if a["batch"] != b["batch"]:
        parts.append(f"batch {b['batch']}")
    if a["concurrency"] != b["concurrency"]:
        parts.append("threads " + ", ".join(f"{k} {v}" for k, v in b["concurrency"].items() if a["concurrency"].get(k) != v))
    return "; ".join(parts) or "as above"


def render(document: dict[str, Any]) -> str:
    st, cap = document["settings"], document["capacity"]
    figs = document["figures"]
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for f in figs:
        by_mode.setdefault(f["mode"], []).append(f)
    runs = sorted({f["run"] for f in figs})
    pipe, lock = by_mode.get("pipeline", []), by_mode.get("lockstep", [])
    mix = next(m for m in document["mixes"] if m["mode"] == (pipe or lock)[0]["mode"])
    n = (pipe or lock)[0]["sessions"]
    turns = dict((int(k), v) for k, v in mix["turns"])
    threads = ", ".join(f"{k} {v}" for k, v in st["concurrency"].items())
    lo, hi = document["load"]
    lines = [
        START,
        "## Against the backend's limit, and against the lockstep design",
        "",
        "`python -m perf.capacity_campaign --runs 3 --diagnose` (~1 hour). "
        f"Measured {document['when']} on this machine ({document['cores']} cores, shared; "
        f"1-minute load average {lo:.1f} at the start, {hi:.1f} at the end), Python {document['python']}.",
        "",
        f"**The server.** `perf/capacity_server.py` behaves, in time, like one vLLM instance of "
        f"fixed capacity: K = {cap['slots']} sequences in service at once, more wait in its FIFO "
        f"queue; a request holds its slot for {cap['prefill_s'] * 1000:g} ms per prompt token "
        f"(prefill) and then {cap['decode_s'] * 1000:g} ms per output token (the K sequences "
        "decode in parallel, as under continuous batching); output lengths are log-normal, "
        f"median {cap['median_tokens']:g} tokens, sigma {cap['sigma']:g}, capped by the request's "
        "`max_tokens`, drawn from a hash of the request, so a request gets the same length in "
        f"every run and in both modes. "
        + (
            "Time scale 1: the delays as stated, not scaled; at this rate the server, not this "
            "machine's two cores, set the pace (see the pipeline's slots idle before the drain). "
            if cap["time_scale"] == 1
            else f"Every delay multiplied by a time scale of {cap['time_scale']:g} (the bound with it). "
        )
        + "Every LLM role of the "
        "campaign points at it: agent, simulated user and extractor (`max_tokens` 512) and "
        "reward judge (128). Each role sends the request it would send a real server (its own "
        "prompt builder, JSON schema and `max_tokens`, through `OpenAIChat`, the production "
        "client), waits for the reply, and then takes its words from the scripted world "
        "(`perf/capacity_engine.py`): the server decides the time, the scripted world what is said.",
        "",
        "**The bound.** Request i holds a slot for s_i = 0.2 ms x P_i + 20 ms x L_i (prompt and "
        "output tokens; times the time scale). K slots deliver at most K slot-seconds per second, so N sessions need at "
        "least sum(s_i) / K seconds, and",
        "",
        "    sessions/hr <= bound = 3600 x K / s_session,    s_session = sum(s_i) / N,",
        "",
        "the campaign's mean slot-seconds per session, summed over the requests the run made. "
        "Efficiency = measured sessions/hr / bound = sum(s_i) / (K x wall time): the share of "
        "the server's slot-time the run used. It ignores that a session's calls are sequential, "
        "so no finite campaign reaches it: once fewer than K sessions are left unfinished the "
        "server cannot be full, whatever runs them (a session has one call in flight at most). "
        "That end of the run is the *drain*; slots idle before it, while K or more sessions "
        "still had work, are the orchestration's loss.",
        "",
        f"**The campaign.** `{st['method']}` (all six stages, all four LLM roles), "
        f"{st['profiles']} generated profiles x {st['sessions']} session, max {st['max_turns']} "
        f"turns, datasets {', '.join(st['datasets'])}, seed {st['seed']}. Sessions end after 2 to "
        f"{st['max_turns'] + 1} simulated-user steps, that is 1 to {st['max_turns']} agent replies "
        "(replies: sessions, "
        + ", ".join(f"{t}: {turns[t]}" for t in sorted(turns))
        + "; sessions with 9 replies ran out of turns). Per session, from the requests:",
        "",
        "| role | calls per session | mean prompt tokens | mean output tokens | slot-seconds per session |",
        "|---|---:|---:|---:|---:|",
    ]
    total = 0.0
    for role, (calls, prompt, out, slot_s) in mix["mix"].items():
        total += slot_s
        lines.append(f"| {role} | {calls / n:.2f} | {prompt:.0f} | {out:.0f} | {slot_s:.1f} |")
    bound = bound_sessions_per_hour(cap["slots"], total)
    lines += [
        f"| all | | | | {total:.1f} |",
        "",
        f"Bound: 3600 x {cap['slots']} / {total:.1f} = **{bound:,.0f} sessions/hr**.",
        "",
        f"**Pipeline**: an embedded Redis and one `vars worker` process per stage "
        f"(`perf.capacity_worker`), threads: {threads}; "
        + (f"parallelism {st['parallelism']}" if st["parallelism"] else "every lane started at launch (no parallelism bound)")
        + f"; the client's cap on requests in flight per role: {st['max_concurrency'] or 'the default (256)'}. "
        f"**Lockstep** (`perf/lockstep.py`): batches of {st['batch']} sessions (the same number in flight"
        f"{' as the pipeline' if (st['parallelism'] or st['profiles']) == st['batch'] else ''}), "
        + ("stage by stage: every session's simulate of turn t, then every judge, update, extract, "
           "retrieve and generate, each step's calls sent at once and the next step when the "
           "slowest returns; then turn t + 1" if st["barrier"] == "stage" else
           "turn by turn: each session runs its turn, the next turn when the slowest session's is done")
        + "; a session that ends waits for its batch. It runs in one process on an in-memory store "
        "(no queues, no Redis), one thread per session, the client cap at the batch size. Both "
        "modes play the same sessions: the outcome of every (profile, session) was identical "
        f"in each repetition ({sum(document['same_sessions'])} of {len(document['same_sessions'])}), "
        "and so were the token mix and the bound.",
        "",
        "| run | mode | wall (s) | sessions/hr | efficiency | slots idle before the drain | slots idle in the drain | drain (s) | no call in flight (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for f in figs:
            if f["run"] == run:
                lines.append(
                    f"| {run} | {f['mode']} | {f['wall_s']:.0f} | {f['sessions_per_hour']:,.0f} | "
                    f"{f['efficiency']:.3f} | {_pct(f['idle_before_drain'])} | {_pct(f['idle_in_drain'])} | "
                    f"{f['drain_s']:.0f} | {f['no_call_s']:.0f} |"
                )
    for mode, rows in by_mode.items():
        lines.append(
            f"| median | {mode} | {_median([f['wall_s'] for f in rows]):.0f} | "
            f"{_median([f['sessions_per_hour'] for f in rows]):,.0f} | "
            f"**{_median([f['efficiency'] for f in rows]):.3f}** | "
            f"{_pct(_median([f['idle_before_drain'] for f in rows]))} | "
            f"{_pct(_median([f['idle_in_drain'] for f in rows]))} | "
            f"{_median([f['drain_s'] for f in rows]):.0f} | {_median([f['no_call_s'] for f in rows]):.0f} |"
        )
    if pipe and lock:
        ratios = []
        lines += [
            "",
            "| run | pipeline / lockstep (sessions/hr) | against a lockstep whose non-LLM steps took no time |",
            "|---:|---:|---:|",
        ]
        for run in runs:
            p = next(f for f in pipe if f["run"] == run)
            q = next(f for f in lock if f["run"] == run)
            ratio = q["wall_s"] / p["wall_s"]
            ideal = (q["wall_s"] - q["no_call_s"]) / p["wall_s"]
            ratios.append((ratio, ideal))
            lines.append(f"| {run} | {ratio:.2f}x | {ideal:.2f}x |")
        lines.append(
            f"| median | **{_median([r for r, _ in ratios]):.2f}x** | {_median([i for _, i in ratios]):.2f}x |"
        )
    variants = document.get("variants") or []
    if variants:
        lines += [
            "",
            "**Diagnosis.** One run each, the same campaign, one setting changed from the runs above:",
            "",
            "| setting | mode | wall (s) | efficiency | slots idle before the drain | slots idle in the drain | drain (s) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for variant in variants:
            label = _variant_label(document, variant)
            for f in variant["figures"]:
                lines.append(
                    f"| {label} | {f['mode']} | {f['wall_s']:.0f} | {f['efficiency']:.3f} | "
                    f"{_pct(f['idle_before_drain'])} | {_pct(f['idle_in_drain'])} | {f['drain_s']:.0f} |"
                )
    lines += ["", *notes(document), END]
    return "\n".join(lines) + "\n"


def notes(document: dict[str, Any]) -> list[str]:
    """What the tables say; figures of the variants where they exist."""
    variants = {_variant_label(document, v): v["figures"][0] for v in document.get("variants") or []}
    cap16 = next((f for label, f in variants.items() if label.startswith("client cap")), None)
    bounded = next((f for label, f in variants.items() if label.startswith("parallelism")), None)
    turn = next((f for label, f in variants.items() if label.startswith("turn barrier")), None)
    pipe = [f for f in document["figures"] if f["mode"] == "pipeline"]
    out = [
        "**Reading the figures.** While K or more sessions were unfinished, the pipeline left "
        "almost no slot idle (slots idle before the drain): the server, not the orchestration, "
        "set the pace. What it lost is the drain: a session's calls are sequential, so with "
        "fewer than K sessions left the server cannot be full, and a session of 10 steps "
        "started alongside one of 2 finishes last. "
        "The drain is a fixed cost per campaign (about one long session), so its share falls as "
        "campaigns grow; this one is sized to run in a few minutes.",
        "",
        "The lockstep loses at every step: the step ends with its slowest call (output lengths are "
        "log-normal and capped by `max_tokens`: the slowest of a step's calls is near the cap, "
        "about three times the median), so the server empties towards each step's end; "
        "sessions that ended hold their places until the batch's longest session is done; and "
        "its non-LLM steps (update, retrieve) run with no call in flight at all. The last "
        "column of the ratio table counts the lockstep as if those steps took no time: the "
        "pipeline's lead does not come from this machine's slow CPU steps.",
        "",
    ]
    fix = (
        "**What was fixed.** The LLM client capped requests in flight at 16 per role per worker "
        "process (`max_concurrency`'s old default). A generate worker with 64 threads then "
        "had only 16 calls at the server, and the same for each role: at most 64 in flight "
        "across the four roles, fewer whenever the roles' demand was uneven, and the server "
        "idled"
    )
    if cap16 is not None:
        fix += (
            f" (the diagnosis row \"client cap 16\": efficiency {cap16['efficiency']:.3f}, "
            f"{_pct(cap16['idle_before_drain'])} of the slot-time idle before the drain, "
            f"against {_pct(_median([f['idle_before_drain'] for f in pipe]))} now)"
        )
    fix += (
        ". The default is now 256 (`LLMConfig.max_concurrency`, `ChatAPI`; docs/decisions.md): "
        "a worker's threads bound the calls it sends, and the server queues the rest."
    )
    out += [fix, ""]
    if bounded is not None:
        out += [
            f"**Parallelism.** A bound near K costs a longer drain (the row \"parallelism "
            f"{bounded_label(document)}\": {bounded['drain_s']:.0f} s of drain, efficiency "
            f"{bounded['efficiency']:.3f}): when the last lanes start, the sessions in flight are "
            "at every stage of their conversations and take up to a whole session to finish "
            "with the server part-empty. With every lane started at launch the server's FIFO "
            "advances all sessions together and they end close together. For a backend-bound "
            "campaign leave `parallelism` unset or well above the backend's batch.",
            "",
        ]
    if turn is not None:
        out += [
            "**A milder lockstep.** With one barrier per turn instead of per stage (each "
            "session runs its whole turn on its own; the batch waits only at the turn's end), "
            f"the lockstep's efficiency was {turn['efficiency']:.3f}: the per-stage barrier of "
            "the reference design costs the most, but waiting for the slowest session every "
            "turn and holding ended sessions' places still leave the server idle. Against this "
            f"milder form the pipeline was {turn['wall_s'] / _median([f['wall_s'] for f in pipe]):.2f}x "
            f"faster; no runner can beat it by more than 1 / {turn['efficiency']:.3f} = "
            f"{1 / turn['efficiency']:.2f}x on this campaign, since the bound caps efficiency at 1.",
            "",
        ]
    return out


def bounded_label(document: dict[str, Any]) -> str:
    for v in document.get("variants") or []:
        if v["settings"]["parallelism"] != document["settings"]["parallelism"]:
            return str(v["settings"]["parallelism"])
    return ""


if __name__ == "__main__":
    main()
