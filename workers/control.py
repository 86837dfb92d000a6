"""``vars_worker``: a remote-control command that says what a worker is and where it runs.

``app.control.broadcast("vars_worker", reply=True)`` answers, per worker, its stage, pool,
batcher, the GPUs it sees (CUDA_VISIBLE_DEVICES), its pid, and whether CUDA is initialized
in it, so an operator (and the tests) can check GPU pinning without logging in to a host.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery.worker.control import inspect_command

_identity: dict[str, Any] = {}


def set_identity(**fields: Any) -> None:
    """Called by ``vars worker`` before the worker starts."""
    _identity.update(fields)


def describe() -> dict[str, Any]:
    torch = sys.modules.get("torch")  # never imported here just to answer
    return {
        **_identity,
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch_imported": torch is not None,
        "cuda_initialized": bool(torch is not None and torch.cuda.is_initialized()),
    }


@inspect_command()
def vars_worker(state: Any) -> dict[str, Any]:
    return describe()
