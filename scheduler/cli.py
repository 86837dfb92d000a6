"""`vars`: the one command. Subcommands import what they need lazily, so `vars --help`
and `vars down` start fast and never load a model."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

STAGE_NAMES = ("simulate", "judge", "update", "extract", "retrieve", "generate")


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.pool import (
        PoolRefused,
        check_gpu_ids,
        choose_pool,
        cuda_visible_devices,
        node_name,
    )

    if args.gpu is not None:
        try:
            check_gpu_ids(args.gpu)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # Before anything imports torch: a worker sees only its own GPUs.
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(args.gpu, os.environ)
    from vars_core.config import ConfigError, config_from_env

    try:
        choice = choose_pool(args.stage, config_from_env(), args.pool, args.concurrency)
    except (ConfigError, PoolRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not choice.batcher:  # one thread, or processes: nothing to merge, only waits to add
        os.environ["VARS_BATCHER__ENABLED"] = "false"
    from scheduler.embedded_redis import resolve_redis_url

    url, _ = resolve_redis_url(local=False)
    os.environ["REDIS_URL"] = url
    import socket

    from queues.topology import queue_for
    from workers import control, restart, runtime
    from workers.app import app

    queues = [queue_for(args.stage, "live"), queue_for(args.stage, "campaign")]
    name = node_name(args.stage, args.gpu)
    print(f"{name.replace('%h', socket.gethostname())}: {choice.reason}", file=sys.stderr, flush=True)
    control.set_identity(
        stage=args.stage, queues=queues, pool=choice.pool, batcher=choice.batcher,
        concurrency=args.concurrency, gpu=args.gpu,
    )
    if choice.pool != "prefork":
        # Models load once, here, in the process whose threads share them (a bad model
        # path fails the start, not every task). A prefork parent loads nothing: its
        # children load their own after the fork.
        try:
            runtime.preload(args.stage)
        except Exception as exc:
            print(f"error: the {args.stage} worker cannot load its models: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    argv = [
        "worker",
        "-Q", ",".join(queues),
        "-n", name,
        "-c", str(args.concurrency),
        "-P", choice.pool,
        "--loglevel", args.loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    # A worker that stops on an unrecoverable error (kombu, Redis gone while it held
    # tasks) re-executes this command in place (workers/restart.py).
    again = ["-m", "scheduler.cli", "worker", "--stage", args.stage, "--concurrency", str(args.concurrency),
             "--pool", args.pool, "--loglevel", args.loglevel, *(["--gpu", args.gpu] if args.gpu else [])]
    restart.run_restarting(lambda: app.worker_main(argv), again, name.replace("%h", socket.gethostname()))
    return 0


def _run_campaign(spec, local: bool, results: Path, concurrency: int) -> tuple[str, list]:
    from scheduler.campaigns import ProgressPrinter, follow, launch
    from scheduler.embedded_redis import resolve_redis_url
    from scheduler.local import LocalStack
    from vars_core.config import config_from_env
    from vars_core.engine import Engine
    from vars_core.store import StateStore
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend

    def go(url: str, stack: LocalStack | None) -> tuple[str, list]:
        os.environ["REDIS_URL"] = url
        from workers.app import make_app

        app = make_app(url)
        store = StateStore(RedisBackend(connect(url)))
        plan = launch(app, Engine(config_from_env()), store, spec)
        print(plan.campaign_id, flush=True)

        printer = ProgressPrinter()

        def progress(done: int, failed: int, total: int) -> None:
            if stack is not None:
                stack.check_alive()
            printer(done, failed, total)

        records = follow(store, plan.campaign_id, results, on_progress=progress)
        return plan.campaign_id, records

    if local:
        with LocalStack(concurrency) as stack:
            return go(stack.redis_url, stack)
    url, _ = resolve_redis_url(local=False)
    return go(url, None)


def _store(url: str | None = None):
    """The StateStore on the pipeline's Redis: ``REDIS_URL``, or the embedded one."""
    from scheduler.embedded_redis import resolve_redis_url
    from vars_core.store import StateStore
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend

    if url is None:
        url, _ = resolve_redis_url(local=False)
    return StateStore(RedisBackend(connect(url)))


def _launch_detached(spec) -> str:
    from scheduler.campaigns import launch
    from scheduler.embedded_redis import resolve_redis_url
    from vars_core.config import config_from_env
    from vars_core.engine import Engine

    url, _ = resolve_redis_url(local=False)
    os.environ["REDIS_URL"] = url
    from workers.app import make_app

    plan = launch(make_app(url), Engine(config_from_env()), _store(url), spec)
    return plan.campaign_id


def cmd_campaign_run(args: argparse.Namespace) -> int:
    from scheduler.spec import SpecError, load_spec

    if args.detach and args.local:
        print(
            "error: --detach cannot be used with --local: a detached campaign needs workers that "
            "outlive this command; start them with `vars up` (or `vars worker`), then run with --detach",
            file=sys.stderr,
        )
        return 2
    try:
        spec = load_spec(args.spec, args.set or [])
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.detach:
        print(_launch_detached(spec), flush=True)
        return 0
    campaign_id, records = _run_campaign(spec, args.local, Path(args.results), args.concurrency)
    failed = sum(r.status == "failed" for r in records)
    print(f"campaign {campaign_id}: {len(records)} sessions ({failed} failed); results in {Path(args.results) / campaign_id}")
    return 0


def cmd_campaign_status(args: argparse.Namespace) -> int:
    import json

    from scheduler.status import UnknownCampaign, campaign_status

    try:
        status = campaign_status(_store(), args.campaign)
    except UnknownCampaign as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
        return 0
    print(f"campaign {status.campaign_id} ({status.state})")
    width = max(len("total"), *(len(m) for m in status.methods))
    print(f"  {'method':<{width}}  {'done':>6} {'running':>7} {'failed':>6} {'total':>6}")
    rows = [(m, c.done, c.running, c.failed, c.total) for m, c in status.methods.items()]
    rows.append(("total", status.done, status.running, status.failed, status.total))
    for name, done, running, failed, total in rows:
        print(f"  {name:<{width}}  {done:>6} {running:>7} {failed:>6} {total:>6}")
    if status.sessions_per_hr is None:
        print("rate: unknown (no launch time recorded)")
    elif status.state == "finished" and status.finished_at is not None:
        print(f"rate: {status.sessions_per_hr:.0f} sessions/hr from launch to finish")
    elif status.state == "cancelled":
        print(f"rate: {status.sessions_per_hr:.0f} sessions/hr from launch to cancel")
    else:
        print(f"rate: {status.sessions_per_hr:.0f} sessions/hr since launch")
    if status.state == "finished":
        print("eta: finished")
    elif status.state == "cancelled":
        print(f"eta: cancelled; {status.pending} sessions will not run")
    elif status.eta_s is None:
        print("eta: unknown until a session finishes")
    else:
        from scheduler.watch import fmt_duration

        print(f"eta: {fmt_duration(status.eta_s)}")
    return 0


def cmd_campaign_cancel(args: argparse.Namespace) -> int:
    from datetime import datetime

    from vars_core.campaign import cancel_campaign

    try:
        outcome, at = cancel_campaign(_store(), args.campaign)
    except KeyError:
        print(f"error: unknown campaign {args.campaign!r}", file=sys.stderr)
        return 2
    when = datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if at is not None else ""
    if outcome == "finished":
        print(f"campaign {args.campaign} already finished: nothing to cancel")
    elif outcome == "already":
        print(f"campaign {args.campaign} was already cancelled (at {when}): nothing to do")
    else:
        print(
            f"cancelled campaign {args.campaign} at {when}: no new session starts and queued "
            "stage tasks are dropped; stages already running finish"
        )
    return 0


def cmd_campaign_failures(args: argparse.Namespace) -> int:
    import json

    import msgspec

    from scheduler.failures import UnknownCampaign, campaign_failures

    try:
        failures = campaign_failures(_store(), args.campaign)
    except UnknownCampaign as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([msgspec.to_builtins(f) for f in failures], indent=2))
        return 0
    if not failures:
        print(f"campaign {args.campaign}: no failed sessions")
        return 0
    print(f"campaign {args.campaign}: {len(failures)} failed session(s)")
    for f in failures:
        print(f"  {f.session_id}  {f.method}  {f.profile_id}  {f.stage}@turn{f.turn}  {f.reason}")
    return 0


def cmd_campaign_retry(args: argparse.Namespace) -> int:
    from scheduler.embedded_redis import resolve_redis_url
    from scheduler.failures import RetryRefused, UnknownCampaign, retry_failures

    url, _ = resolve_redis_url(local=False)
    os.environ["REDIS_URL"] = url
    from workers.app import make_app

    try:
        retried = retry_failures(make_app(url), _store(url), args.campaign)
    except (UnknownCampaign, RetryRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not retried:
        print(f"campaign {args.campaign}: no failed sessions, nothing to retry")
        return 0
    print(f"campaign {args.campaign}: retrying {len(retried)} failed session(s)")
    for f in retried:
        print(f"  {f.session_id} from {f.stage}@turn{f.turn}")
    return 0


def cmd_campaign_list(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    from scheduler.status import list_campaigns

    campaigns = list_campaigns(_store())
    if args.json:
        print(json.dumps([c.to_json() for c in campaigns], indent=2))
        return 0
    if not campaigns:
        print("no campaigns")
        return 0
    for c in campaigns:
        launched = datetime.fromtimestamp(c.launched_at).strftime("%Y-%m-%d %H:%M")
        print(
            f"{c.campaign_id}  {c.name}  {','.join(c.methods)}  {c.done}/{c.total} done  "
            f"{c.failed} failed  {c.state}  (launched {launched})"
        )
    return 0


def cmd_campaign_export(args: argparse.Namespace) -> int:
    from scheduler.status import (
        ExportError,
        UnknownCampaign,
        campaign_records,
        write_jsonl,
        write_parquet,
    )

    if args.format == "parquet" and not args.out:
        print("error: --format parquet needs --out PATH", file=sys.stderr)
        return 2
    try:
        records = campaign_records(_store(), args.campaign)
        if args.format == "parquet":
            write_parquet(records, Path(args.out))
        elif args.out:
            with open(args.out, "wb") as out:
                write_jsonl(records, out)
        else:
            write_jsonl(records, sys.stdout.buffer)
    except (UnknownCampaign, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        print(f"{len(records)} sessions -> {args.out}", file=sys.stderr)
    return 0


def cmd_campaign_extend(args: argparse.Namespace) -> int:
    from scheduler.embedded_redis import resolve_redis_url
    from scheduler.extend import ExtendRefused, UnknownCampaign, extend_campaign
    from vars_core.config import config_from_env
    from vars_core.engine import Engine

    url, _ = resolve_redis_url(local=False)
    os.environ["REDIS_URL"] = url
    from workers.app import make_app

    try:
        result = extend_campaign(make_app(url), Engine(config_from_env()), _store(url), args.campaign, args.sessions)
    except (UnknownCampaign, ExtendRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"campaign {result.campaign_id}: extended from {result.previous} to {result.sessions} sessions per lane "
        f"({result.total} in all); {len(result.started)} lane(s) started again, "
        f"{result.running} still running go on by themselves"
    )
    return 0


def cmd_campaign_watch(args: argparse.Namespace) -> int:
    from scheduler.watch import watch_command

    return watch_command(_store(), args.campaign, args.interval)


def cmd_demo(args: argparse.Namespace) -> int:
    from scheduler.demo import DEMO_SPEC, summary_table

    started = time.monotonic()
    campaign_id, records = _run_campaign(DEMO_SPEC, True, Path(args.results), args.concurrency)
    elapsed = time.monotonic() - started
    print()
    print(summary_table(records, DEMO_SPEC.methods))
    print(
        f"\n{len(records)} sessions in {elapsed:.0f} s ({len(records) / elapsed * 3600:.0f} sessions/hr); "
        f"results in {Path(args.results) / campaign_id}"
    )
    return 0


def _resume_handles():
    """(engine, store, publish) on the pipeline's Redis, for resume and sweep."""
    from scheduler.embedded_redis import resolve_redis_url
    from vars_core.config import config_from_env
    from vars_core.engine import Engine

    url, _ = resolve_redis_url(local=False)
    os.environ["REDIS_URL"] = url
    from workers.app import make_app
    from workers.publish import publish

    app = make_app(url)
    return Engine(config_from_env()), _store(url), lambda event: publish(app, event)


def cmd_campaign_resume(args: argparse.Namespace) -> int:
    from scheduler.resume import ResumeRefused, UnknownCampaign, describe, resume_campaign

    engine, store, publish = _resume_handles()
    try:
        report = resume_campaign(engine, store, args.campaign, publish)
    except (UnknownCampaign, ResumeRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    events = report.events
    if not events:
        if report.finished >= report.total:
            print(f"campaign {args.campaign} already finished ({report.total} sessions): nothing to resume")
        else:
            print(f"campaign {args.campaign}: every lane is complete, nothing to resume")
        return 0
    print(
        f"campaign {args.campaign}: resumed {report.lanes_resumed} lane(s), republished {len(events)} event(s); "
        f"{report.lanes_complete} lane(s) complete; {report.finished}/{report.total} sessions had finished"
    )
    for result in events:
        print(f"  {describe(result)}")
    return 0


def cmd_campaign_sweep(args: argparse.Namespace) -> int:
    from datetime import datetime

    from scheduler.resume import describe, sweep_once

    engine, store, publish = _resume_handles()
    if not args.once:
        print(
            f"sweeping every {args.interval:g} s: lanes with no progress for {args.stalled_after:g} s are resumed",
            flush=True,
        )
    while True:
        try:
            reports = sweep_once(engine, store, publish, args.stalled_after)
        except Exception as exc:  # e.g. Redis restarting: try again next round
            if args.once:
                raise
            print(f"sweep failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            reports = []
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        for report in reports:
            print(
                f"{stamp} campaign {report.campaign_id}: republished {len(report.events)} event(s) "
                f"on {report.lanes_resumed} stalled lane(s)",
                flush=True,
            )
            for result in report.events:
                print(f"  {describe(result)}", flush=True)
        if args.once:
            if not reports:
                print("no stalled lanes")
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def cmd_campaign_report(args: argparse.Namespace) -> int:
    import json

    from scheduler.report import ReportError, build_report, report_json, write_report

    try:
        report = build_report(args.campaign, args.results, args.baseline)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report_json(report), indent=2))
        return 0
    path = write_report(report, Path(args.out) if args.out else None)
    print(f"report: {path}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from scheduler.local import up

    url, pids = up(args.concurrency)
    print(f"redis: {url}\nworkers: {' '.join(map(str, pids))}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from scheduler.local import down

    stopped = down()
    print(f"stopped {stopped} worker(s) and the embedded redis")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vars", description="VARS: personalized LLM assistants on queues")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="consume one stage's queues (live first)")
    worker.add_argument("--stage", required=True, choices=STAGE_NAMES)
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--gpu", default=None, help="GPU ids for CUDA_VISIBLE_DEVICES, e.g. 0 or 0,1")
    worker.add_argument(
        "--pool", default="auto", choices=("auto", "threads", "prefork", "solo"),
        help="auto (default): threads, with the dynamic batcher for in-process models on a GPU; "
        "prefork is refused for a model on a GPU (CUDA cannot be used in a process that forks)",
    )
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)

    campaign = sub.add_parser("campaign", help="benchmark campaigns")
    campaign_sub = campaign.add_subparsers(dest="campaign_command", required=True)
    run = campaign_sub.add_parser("run", help="enqueue a campaign and follow it to the end")
    run.add_argument("spec", help="campaign spec (TOML)")
    run.add_argument("--local", action="store_true", help="start Redis (embedded unless REDIS_URL) and workers here")
    run.add_argument("--results", default="results", help="results directory (default: ./results)")
    run.add_argument("--concurrency", type=int, default=2, help="threads per local worker")
    run.add_argument(
        "--detach", action="store_true",
        help="print the campaign id and return at once (workers from `vars up` run it; not with --local)",
    )
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override a spec field (repeatable; dotted keys for tables), e.g. --set sessions=15 "
        "--set parallelism=50 --set backends.agent.base_url=http://h:8000/v1",
    )
    run.set_defaults(func=cmd_campaign_run)
    status = campaign_sub.add_parser(
        "status",
        help="sessions done/running/failed per method, rate and ETA of one campaign",
        description=(
            "Progress of one campaign, read from Redis. A lane is one profile x method; its "
            "sessions run in order. done/failed: finished sessions, by their record's status. "
            "running: lanes whose next session has started (stored and enqueued) but not "
            "ended, at most one per lane. pending = total - done - failed - running. "
            "Rate: finished sessions per hour since launch; ETA: the rest at that rate."
        ),
    )
    status.add_argument("campaign", help="a campaign id")
    status.add_argument("--json", action="store_true", help="print the counts as JSON")
    status.set_defaults(func=cmd_campaign_status)
    listing = campaign_sub.add_parser("list", help="every launched campaign, newest first")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(func=cmd_campaign_list)
    export = campaign_sub.add_parser(
        "export", help="the finished sessions' records (as in sessions.jsonl), read from Redis"
    )
    export.add_argument("campaign", help="a campaign id")
    export.add_argument("--format", default="jsonl", choices=("jsonl", "parquet"))
    export.add_argument("--out", default=None, help="file to write (default for jsonl: stdout; parquet needs it)")
    export.set_defaults(func=cmd_campaign_export)
    cancel = campaign_sub.add_parser(
        "cancel",
        help="stop a campaign: no new session starts, queued stage tasks are dropped",
        description=(
            "Mark a campaign cancelled in Redis. No new session of it starts, and its stage "
            "tasks still queued are acknowledged and dropped; a stage already running "
            "finishes. Cancelling twice, or a finished campaign, changes nothing."
        ),
    )
    cancel.add_argument("campaign", help="a campaign id")
    cancel.set_defaults(func=cmd_campaign_cancel)
    failures = campaign_sub.add_parser(
        "failures", help="the failed sessions of a campaign: method, profile, stage/turn, reason"
    )
    failures.add_argument("campaign", help="a campaign id")
    failures.add_argument("--json", action="store_true", help="print them as JSON")
    failures.set_defaults(func=cmd_campaign_failures)
    retry = campaign_sub.add_parser(
        "retry",
        help="run every failed session of a campaign again, from the stage it failed at",
    )
    retry.add_argument("campaign", help="a campaign id")
    retry.set_defaults(func=cmd_campaign_retry)
    resume = campaign_sub.add_parser(
        "resume",
        help="restart a campaign's stalled lanes from the store (after lost messages or killed workers)",
        description=(
            "For every lane, republish the next event of its unfinished session (the first "
            "stage not committed), or start its next session if the last one ended. Ended "
            "sessions (done or failed) are never run again; stage commits are idempotent, so "
            "an event still queued being published twice is harmless. Refused for a cancelled campaign."
        ),
    )
    resume.add_argument("campaign", help="a campaign id")
    resume.set_defaults(func=cmd_campaign_resume)
    sweep = campaign_sub.add_parser(
        "sweep",
        help="every --interval s, resume the lanes of running campaigns with no progress for --stalled-after s",
    )
    sweep.add_argument(
        "--stalled-after", type=float, default=600.0,
        help="seconds without a stage commit before a lane counts as stalled (default: 600; keep it above the longest stage)",
    )
    sweep.add_argument("--interval", type=float, default=60.0, help="seconds between sweeps (default: 60)")
    sweep.add_argument("--once", action="store_true", help="sweep once and exit")
    sweep.set_defaults(func=cmd_campaign_sweep)
    extend = campaign_sub.add_parser(
        "extend",
        help="continue every lane of a campaign to N sessions in total (memory and vectors carry on)",
    )
    extend.add_argument("campaign", help="a campaign id")
    extend.add_argument("--sessions", type=int, required=True, help="sessions per lane in total (more than planned)")
    extend.set_defaults(func=cmd_campaign_extend)
    watch = campaign_sub.add_parser(
        "watch", help="live progress bars per method, rate and ETA, until the campaign ends (Ctrl-C leaves it running)"
    )
    watch.add_argument("campaign", help="a campaign id")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default: 2)")
    watch.set_defaults(func=cmd_campaign_watch)
    report = campaign_sub.add_parser(
        "report", help="tables with 95%% CIs, paired tests and plots for one campaign"
    )
    report.add_argument("campaign", help="a campaign id, or its results directory")
    report.add_argument("--results", default="results", help="where campaign ids are looked up (default: ./results)")
    report.add_argument("--baseline", default=None, help="method for paired tests (default: vanilla if present, else the first)")
    report.add_argument("--out", default=None, help="Markdown path (default: <results>/<id>/report.md); PNGs go next to it")
    report.add_argument("--json", action="store_true", help="print the per-method summary as JSON instead of writing files")
    report.set_defaults(func=cmd_campaign_report)

    demo = sub.add_parser("demo", help="run a small built-in campaign on the embedded default")
    demo.add_argument("--results", default="results")
    demo.add_argument("--concurrency", type=int, default=2)
    demo.set_defaults(func=cmd_demo)

    up_parser = sub.add_parser("up", help="start the embedded Redis and one worker per stage in the background")
    up_parser.add_argument("--concurrency", type=int, default=2)
    up_parser.set_defaults(func=cmd_up)
    down_parser = sub.add_parser("down", help="stop what `vars up` started")
    down_parser.set_defaults(func=cmd_down)

    from scheduler.profiles_cli import add_profiles_parser

    add_profiles_parser(sub)
    from scheduler.gateway_cli import add_gateway_parsers

    add_gateway_parsers(sub)
    from scheduler.daemon_cli import add_scheduler_parser

    add_scheduler_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
