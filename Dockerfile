# The vars image: every VARS service of docker-compose.yml (stage workers, gateway,
# scheduler, Flower) runs it; the models are served by the vLLM images.
#
#   GPU box (in-process models on CUDA):  --build-arg FAISS_PACKAGE=faiss-gpu-cu12
#   CPU-only hosts (workers of HTTP-backed stages, gateway, scheduler):
#                                          --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# faiss-cpu and faiss-gpu both provide the module `faiss`: the GPU build replaces the CPU
# one, never sits next to it. PyPI's torch for Linux is the CUDA build.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ARG FAISS_PACKAGE=faiss-cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /opt/vars
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "torch>=2.2,<3" --index-url "$TORCH_INDEX_URL"; fi

COPY pyproject.toml README.md ./
COPY vars_core vars_core
COPY queues queues
COPY workers workers
COPY scheduler scheduler
COPY gateway gateway
RUN pip install . flower \
    && if [ "$FAISS_PACKAGE" != "faiss-cpu" ]; then \
         pip uninstall -y faiss-cpu && pip install "$FAISS_PACKAGE"; \
       fi

RUN useradd --create-home --uid 10001 vars
USER vars
# The VARS_HOME of a container; with REDIS_URL set nothing is stored here.
ENV VARS_HOME=/home/vars/.local/share/vars
CMD ["vars", "--help"]
