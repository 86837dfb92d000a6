"""``vars worker`` on the paced engine (``perf/capacity_engine.py``): every LLM role takes
its time from the server in its config and its words from the scripted world.

    VARS_CONFIG=paced.toml python -m perf.capacity_worker --stage generate --concurrency 64

Arguments are ``vars worker``'s. The engine is installed as the process's engine before
the worker starts, so every task of this process runs on it; nothing else changes.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from perf.capacity_engine import PacedEngine
    from scheduler.cli import main as vars_main
    from vars_core.config import config_from_env
    from workers import runtime

    runtime._engine = PacedEngine(config_from_env())  # what runtime.engine() then returns
    return vars_main(["worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
