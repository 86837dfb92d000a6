"""Which Celery pool a stage's worker runs, decided from the models the stage calls.

Pure: reads an EngineConfig, imports no model library, so ``vars worker`` can decide (and
refuse) before torch is imported.

- A stage that calls model servers (vLLM, any OpenAI-compatible endpoint) waits on I/O:
  a threads pool keeps many requests in flight and the server batches them.
- A stage with an in-process torch model (embedder, reranker) also runs threads: one copy
  of the model per process, and the dynamic batcher merges the threads' requests.
- prefork is never chosen for an in-process model on a GPU, and refused when asked for:
  CUDA cannot be used in a process that forks, and every child would load its own copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from vars_core.batched import IN_PROCESS_EMBEDDERS, IN_PROCESS_RERANKERS, batching_on
from vars_core.config import EngineConfig

Pool = Literal["threads", "prefork", "solo"]
POOLS = ("auto", "threads", "prefork", "solo")
_GPU_IDS = re.compile(r"^[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*$")


class PoolRefused(ValueError):
    """The requested pool cannot run this stage's models; the message says why."""


@dataclass(frozen=True)
class StageModel:
    role: str  # embedder, reranker, agent, judge, extractor, simulator, answer_judge
    kind: str
    device: str = ""  # where an in-process model runs; "" for a server
    base_url: str = ""  # a server's URL

    @property
    def in_process(self) -> bool:
        return bool(self.device)

    @property
    def on_accelerator(self) -> bool:
        return self.in_process and not self.device.startswith("cpu")

    def describe(self) -> str:
        where = self.device if self.in_process else self.base_url
        return f"{self.role} ({self.kind} on {where})"


@dataclass(frozen=True)
class PoolChoice:
    pool: Pool
    batcher: bool  # whether the in-process models' requests are merged
    reason: str


def stage_models(stage: str, config: EngineConfig) -> list[StageModel]:
    """The models ``stage`` calls under ``config``: in-process ones and servers. Scripted
    roles, keyword and rule backends use no model and are not listed."""
    models: list[StageModel] = []

    def llm(role: str, field: str) -> None:
        cfg = getattr(config, field)
        if cfg.kind == "openai":
            models.append(StageModel(role, cfg.kind, base_url=cfg.base_url))

    if stage == "simulate":
        if config.simulator == "llm":
            llm("simulator", "simulator_llm")
        if config.answer_judge_llm.kind == "openai":
            llm("answer_judge", "answer_judge_llm")
        elif config.judge == "llm":
            llm("answer_judge", "judge_llm")
    elif stage == "judge" and config.judge == "llm":
        llm("judge", "judge_llm")
    elif stage == "generate":
        llm("agent", "agent")
    if stage == "extract" and config.extractor == "llm":
        llm("extractor", "extractor_llm")
    if stage in ("extract", "retrieve"):
        emb = config.embedder
        if emb.kind in IN_PROCESS_EMBEDDERS:
            models.append(StageModel("embedder", emb.kind, device=emb.device))
        else:
            models.append(StageModel("embedder", emb.kind, base_url=emb.base_url))
    # "auto", "none" and "scripted" load no model.
    if stage == "retrieve" and config.reranker.kind not in ("auto", "none", "scripted"):
        rr = config.reranker
        if rr.kind in IN_PROCESS_RERANKERS:
            models.append(StageModel("reranker", rr.kind, device=rr.device))
        else:
            models.append(StageModel("reranker", rr.kind, base_url=rr.base_url))
    return models


def choose_pool(
    stage: str, config: EngineConfig, requested: str = "auto", concurrency: int = 2
) -> PoolChoice:
    if requested not in POOLS:
        raise PoolRefused(f"unknown pool {requested!r}; pools are {', '.join(POOLS)}")
    models = stage_models(stage, config)
    local = [m for m in models if m.in_process]
    remote = [m for m in models if not m.in_process]
    on_gpu = [m for m in local if m.on_accelerator]
    if requested == "prefork" and on_gpu:
        raise PoolRefused(
            f"--pool prefork cannot run the {stage} stage: its "
            f"{', '.join(m.describe() for m in on_gpu)} runs in the worker process, and CUDA "
            "cannot be used in a process that forks (each child would also load its own copy "
            "and none could share a batch); use --pool threads or --pool auto"
        )
    pool: Pool = "threads" if requested == "auto" else requested  # type: ignore[assignment]
    batcher = (
        pool == "threads"
        and concurrency > 1
        and any(batching_on(config.batcher, True, m.device) for m in local)
    )
    if local:
        why = f"in-process {', '.join(m.describe() for m in local)}: one copy per process"
        if batcher:
            why += f", dynamic batcher on ({config.batcher.max_items} items / {config.batcher.max_wait_ms:g} ms)"
        elif pool == "threads" and concurrency > 1:
            if config.batcher.enabled is False:
                why += ", batcher off (batcher.enabled = false)"
            else:
                why += ", batcher off (batcher.enabled = 'auto' batches models on a GPU only)"
        elif pool == "threads":
            why += ", batcher off (one thread: nothing to merge)"
        elif pool == "prefork":
            why += "; prefork: every child loads its own copy, no batching across them"
    elif remote:
        why = f"waits on model servers: {', '.join(m.describe() for m in remote)}"
    else:
        why = "no model: light CPU work"
    return PoolChoice(pool, batcher, f"{pool} pool: {why}")


def check_gpu_ids(gpu: str) -> str:
    """``--gpu``: CUDA device ids or UUIDs, comma-separated ("1", "0,1", "GPU-...")."""
    if not _GPU_IDS.match(gpu):
        raise ValueError(f"--gpu {gpu!r}: expected device ids separated by commas, e.g. 1 or 0,1")
    return gpu


def cuda_visible_devices(gpu: str, environ: Mapping[str, str]) -> str:
    """CUDA_VISIBLE_DEVICES for ``--gpu`` (the host's ids). In a container given GPUs by
    the NVIDIA runtime (compose ``device_ids``), NVIDIA_VISIBLE_DEVICES lists those host
    ids and CUDA numbers the GPUs it sees from 0: a host id becomes its position there,
    so one ``--gpu`` value means the same GPU on the host and in the container."""
    exposed = [d.strip() for d in environ.get("NVIDIA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = gpu.split(",")
    if not exposed or exposed[0] in ("all", "none", "void") or not set(ids) <= set(exposed):
        return gpu
    return ",".join(str(exposed.index(i)) for i in ids)


def node_name(stage: str, gpu: str | None) -> str:
    """``retrieve-gpu1@%h``; several ids are joined by '-' (``simulate-gpu0-1@%h``),
    since Celery's ``--destination`` lists are comma-separated."""
    if gpu is None:
        return f"{stage}@%h"
    return f"{stage}-gpu{gpu.replace(',', '-')}@%h"
