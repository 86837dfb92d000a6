"""`vars gateway`, `vars keys` and `vars chat`: the live HTTP API, its API keys, and a
terminal client on it.

Here rather than in ``gateway/``: `--local` and `keys` need the embedded Redis and the
local workers, which are the scheduler's, and the gateway package does not import it.
Heavy imports stay inside the handlers, so registering the parsers costs nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_PORT = 8100


def add_gateway_parsers(sub: argparse._SubParsersAction) -> None:
    gw = sub.add_parser(
        "gateway",
        help="serve the OpenAI-compatible, personalized chat API (POST /v1/chat/completions, ...)",
        description=(
            "Serve the live HTTP API on the pipeline's Redis (REDIS_URL, else the embedded one): "
            "chat completions (streamed or not; the end user from `user`, the method from the model "
            "name, e.g. vars-rag_vector), models, feedback, a user's memory and sessions, /healthz "
            "and /metrics. Turns run on the stage workers (`vars up`, or --local)."
        ),
    )
    gw.add_argument("--host", default="127.0.0.1")
    gw.add_argument("--port", type=int, default=DEFAULT_PORT)
    gw.add_argument("--local", action="store_true", help="start Redis (embedded unless REDIS_URL) and a worker per stage here, stopped on exit")
    gw.add_argument("--concurrency", type=int, default=2, help="threads per local worker (with --local)")
    gw.add_argument("--idle-timeout", type=float, default=None, metavar="S", help="seconds after which an idle default session ends (default: 1800; 0: never)")
    gw.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds without a chunk before a 504 (default: 120)")
    gw.add_argument("--rate", type=float, default=None, metavar="R", help="requests per second per key, unless the key sets its own (default: 10)")
    gw.add_argument("--burst", type=int, default=None, metavar="N", help="requests a key may send at once (default: 20)")
    gw.add_argument("--max-body", type=int, default=None, metavar="BYTES", help="request body limit per key, unless the key sets its own (default: 1 MiB)")
    gw.add_argument("--log-level", default="info")
    gw.set_defaults(func=cmd_gateway)

    keys = sub.add_parser("keys", help="API keys of the gateway: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key for some users; prints the key (shown once)")
    create.add_argument("--users", required=True, help="comma-separated end-user ids the key may act for")
    create.add_argument("--tenant", default="default", help="the key's tenant (its users' namespace; default: default)")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--rate", type=float, default=None, help="requests per second (default: the gateway's)")
    create.add_argument("--burst", type=int, default=None, help="burst size (default: the gateway's)")
    create.add_argument("--max-body", type=int, default=None, metavar="BYTES", help="request body limit (default: the gateway's)")
    create.set_defaults(func=cmd_keys_create)
    revoke = keys_sub.add_parser("revoke", help="revoke a key, by its id or the key itself")
    revoke.add_argument("key", help="key id (from `vars keys list`) or the key")
    revoke.set_defaults(func=cmd_keys_revoke)
    listing = keys_sub.add_parser("list", help="every key: id, tenant, users, state (never the key)")
    listing.set_defaults(func=cmd_keys_list)

    chat = sub.add_parser("chat", help="chat with the personalized assistant in the terminal, through the gateway")
    chat.add_argument("--user", required=True, help="your end-user id")
    chat.add_argument("--key", default=None, help="API key (default: $VARS_API_KEY)")
    chat.add_argument("--base-url", default=None, help=f"the gateway (default: $VARS_BASE_URL or http://127.0.0.1:{DEFAULT_PORT}/v1)")
    chat.add_argument("--model", default="vars-rag_vector", help="vars-<method> (default: vars-rag_vector)")
    chat.add_argument("--session", default=None, help="continue a named session (default: a new one per run)")
    chat.set_defaults(func=cmd_chat)


def _key_store():
    from gateway.auth import KeyStore
    from scheduler.cli import _store

    return KeyStore(_store().backend)


def _settings(args: argparse.Namespace):
    from gateway.settings import GatewaySettings

    given = {
        "idle_timeout_s": args.idle_timeout,
        "chunk_timeout_s": args.timeout,
        "rate_per_s": args.rate,
        "burst": args.burst,
        "max_body_bytes": args.max_body,
    }
    return GatewaySettings(**{k: v for k, v in given.items() if v is not None})


def _serve(url: str, args: argparse.Namespace) -> None:
    os.environ["REDIS_URL"] = url
    import uvicorn

    from gateway.app import build_app

    app = build_app(url, _settings(args))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


def cmd_gateway(args: argparse.Namespace) -> int:
    from scheduler.embedded_redis import resolve_redis_url

    if args.local:
        from scheduler.local import LocalStack

        with LocalStack(args.concurrency) as stack:
            _serve(stack.redis_url, args)
        return 0
    url, _ = resolve_redis_url(local=False)
    _serve(url, args)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from gateway.auth import KeyRefused

    users = [u.strip() for u in args.users.split(",") if u.strip()]
    try:
        key, record = _key_store().create(
            users, tenant=args.tenant, name=args.name, rate_per_s=args.rate, burst=args.burst, max_body_bytes=args.max_body
        )
    except KeyRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(key)
    print(f"key id {record.key_id}: tenant {record.tenant}, users {','.join(record.users)} (the key is shown only now)", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from gateway.auth import KeyRefused

    try:
        record = _key_store().revoke(args.key)
    except KeyRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"revoked key {record.key_id} (tenant {record.tenant}, users {','.join(record.users)})")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from datetime import datetime

    records = _key_store().list()
    if not records:
        print("no keys")
    for r in records:
        made = datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M")
        state = "revoked" if r.revoked_at is not None else "active"
        name = f"  {r.name}" if r.name else ""
        print(f"{r.key_id}  {state}  tenant={r.tenant}  users={','.join(r.users)}  created {made}{name}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from gateway.chat_client import ChatClient, run

    key = args.key or os.environ.get("VARS_API_KEY")
    if not key:
        print("error: no API key: pass --key or set VARS_API_KEY (make one with `vars keys create`)", file=sys.stderr)
        return 2
    base = args.base_url or os.environ.get("VARS_BASE_URL") or f"http://127.0.0.1:{DEFAULT_PORT}/v1"
    return run(ChatClient(base, key, args.user, args.model, args.session))
