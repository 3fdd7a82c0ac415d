# One image for the web process and the workers. CPU build by default; for GPU workers build with
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
FROM python:3.11-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN pip install --no-cache-dir "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
COPY pyproject.toml README.md ./
COPY vpo vpo
COPY webapp webapp
COPY worker worker
COPY manage.py ./
RUN pip install --no-cache-dir . && DEBUG=1 python manage.py collectstatic --noinput -v 0
# the official VBench in a virtualenv of its own, for the vbench worker only (docker-compose.yml: worker-vbench)
ARG WITH_VBENCH=0
COPY scripts/setup_vbench.sh scripts/
RUN if [ "$WITH_VBENCH" = 1 ]; then VBENCH_VENV=/opt/vbench bash scripts/setup_vbench.sh; fi
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MEDIA_ROOT=/data/media
