"""`vars scheduler`: serve the Redis-side metrics and run the sweeper (scheduler/daemon.py).

Heavy imports stay inside the handler so that registering the parser costs nothing.
"""

from __future__ import annotations

import argparse
import logging
import os


def add_scheduler_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "scheduler",
        help="serve queue/campaign metrics and sweep stalled lanes, until stopped",
        description=(
            "The scheduler daemon: serves Prometheus metrics read from Redis at scrape time "
            "(queue depths, dead-letter length, campaign progress, lanes in flight) and, every "
            "--sweep-interval seconds, republishes the next event of lanes with no progress for "
            "--stalled-after seconds (as `vars campaign sweep`)."
        ),
    )
    parser.add_argument("--metrics-port", type=int, default=9100, help="port of /metrics (default: 9100; 0: none)")
    parser.add_argument("--metrics-addr", default="0.0.0.0", help="address to bind (default: 0.0.0.0)")
    parser.add_argument(
        "--sweep-interval", type=float, default=60.0, help="seconds between sweeps (default: 60; 0: do not sweep)"
    )
    parser.add_argument(
        "--stalled-after", type=float, default=600.0,
        help="seconds without a stage commit before a lane counts as stalled (default: 600)",
    )
    parser.add_argument(
        "--retention", type=float, default=86400.0,
        help="seconds an ended campaign stays in the metrics (default: 86400)",
    )
    parser.add_argument("--loglevel", default="INFO")
    parser.set_defaults(func=cmd_scheduler)


def cmd_scheduler(args: argparse.Namespace) -> int:
    from scheduler.embedded_redis import resolve_redis_url
    from vars_core.config import config_from_env
    from vars_core.engine import Engine
    from vars_core.store import StateStore
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url, _ = resolve_redis_url(local=False)
    os.environ["REDIS_URL"] = url
    from scheduler.daemon import run
    from workers.app import make_app
    from workers.publish import publish

    app = make_app(url)
    # Few retries: a scrape should answer "Redis down" quickly, not hang past its timeout.
    store = StateStore(RedisBackend(connect(url, socket_timeout=5.0, retries=2)))
    run(
        Engine(config_from_env()),
        store,
        lambda event: publish(app, event),
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        sweep_interval=args.sweep_interval,
        stalled_after=args.stalled_after,
        retention_s=args.retention,
    )
    return 0
