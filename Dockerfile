# MattePod image for RunPod GPU pods (and any Docker + NVIDIA host). BUILD.md explains build, push and run.
#   docker build -t mattepod .                        -> Gradio UI (default target "ui")
#   docker build --target serverless -t mattepod-sls . -> RunPod serverless worker
# Weights are NOT baked in: docker/runtime_setup.sh fetches and verifies them into /workspace/weights at start.
# Base: Debian (pinned dated tag). torch 2.14.1's PyPI wheels bring their own CUDA 13.0 user-space libraries
# (cudart, cuBLAS, cuDNN, ...); the host's NVIDIA runtime mounts the driver. Hosts need a driver >= 580.
# Debian, not nvidia/cuda: the image can be built and started by docker/rehearse.sh in CI (BUILD.md "Why Debian").
FROM debian:bookworm-20250520-slim AS runtime

ARG VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="MattePod" \
      org.opencontainers.image.description="GPU video matting (SAM 2 prompts + MatAnyone) with a Gradio UI, CLI and RunPod worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="debian:bookworm-20250520-slim" \
      com.runpod.ports="7860/http" \
      com.runpod.volume="/workspace"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# System packages: Python 3.11, Debian's ffmpeg 5.1 (h264_nvenc/hevc_nvenc + cuvid decoders, loaded from the
# driver the NVIDIA runtime mounts), tini as PID 1, sshd for RunPod's PUBLIC_KEY (scp/rsync of big files).
# Versions follow the pinned base. The mount points exist so a volume can be mounted on a read-only image.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ffmpeg tini ca-certificates openssh-server \
 && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*_key* \
 && mkdir -p /workspace /runpod-volume /run/sshd

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/opt/mattepod/scripts:/opt/mattepod/docker:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SAM2_BUILD_CUDA=0

# Python dependencies, pinned (docker/constraints.txt = the tested versions), in their own layers so that a code
# change does not reinstall torch. torch first: sam2 builds against the installed torch.
# Behind a TLS-intercepting proxy pass the proxy's CA bundle and mirrors as build args (never stored in the
# image: ARGs are not ENV); empty ones are unset so pip keeps its defaults. BUILD.md "Corporate proxy".
ARG PIP_CERT=""
ARG PIP_INDEX_URL=""
ARG PIP_FIND_LINKS=""
COPY docker/constraints.txt /opt/mattepod/docker/constraints.txt
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi; \
    if [ -z "$PIP_FIND_LINKS" ]; then unset PIP_FIND_LINKS; fi; \
    python3 -m venv /opt/venv \
 && pip install -c /opt/mattepod/docker/constraints.txt setuptools \
 && pip install -c /opt/mattepod/docker/constraints.txt torch torchvision \
 && pip install --no-build-isolation -r /opt/mattepod/docker/constraints.txt

# The code lives outside /workspace: RunPod mounts its volume there and would hide anything baked in.
COPY . /opt/mattepod
WORKDIR /opt/mattepod
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi; \
    if [ -z "$PIP_FIND_LINKS" ]; then unset PIP_FIND_LINKS; fi; \
    pip install --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info \
 && pip check \
 && chmod +x docker/*.sh \
 && python -c "import mattepod, sam2, torch, gradio, runpod, huggingface_hub; print('imports ok', torch.__version__)"

# NVIDIA_REQUIRE_CUDA: the NVIDIA container runtime refuses a host whose driver cannot run CUDA 13.0 (what the
# nvidia/cuda base would have said), instead of a worker that fails on its first job.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,video,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0" \
    MATTEPOD_HOME=/opt/mattepod \
    MODEL_CACHE_DIR=/workspace/weights \
    OUTPUT_DIR=/workspace/output \
    HF_HOME=/workspace/.cache/huggingface \
    PORT=7860 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    STARTUP_COMMAND="python /opt/mattepod/app/gradio_app.py"

ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/opt/mattepod/docker/entrypoint.sh"]

# RunPod serverless worker: same image, the worker instead of the UI, no port, no HTTP health check.
# Serverless workers mount the network volume at /runpod-volume (pods: /workspace).
FROM runtime AS serverless
ENV STARTUP_COMMAND="python -m mattepod.serverless" \
    RUNPOD_MIN_CUDA_VERSION=13.0 \
    MODEL_CACHE_DIR=/runpod-volume/weights \
    OUTPUT_DIR=/runpod-volume/output
HEALTHCHECK NONE

# Default target: the Gradio UI on port 7860.
FROM runtime AS ui
# Gradio copies every upload into its temp folder: on the volume, not the 20 GB container disk.
ENV GRADIO_TEMP_DIR=/workspace/.cache/gradio
EXPOSE 7860 22
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD ["python", "/opt/mattepod/docker/healthcheck.py"]
