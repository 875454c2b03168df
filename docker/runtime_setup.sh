#!/usr/bin/env bash
# Container start-up work that must happen at run time (never at build time): create the volume folders,
# fetch + verify the model weights selected by MODELS into MODEL_CACHE_DIR, probe the video encoders.
# Fails (non-zero, one clear line) when a required model cannot be had: the app never starts without weights.
set -Eeuo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
app_dir="${MATTEPOD_HOME:-$(dirname "$here")}"
python_bin="${PYTHON:-python}"

log() { printf '[setup] %s\n' "$*" >&2; }

export MODEL_CACHE_DIR="${MODEL_CACHE_DIR:-/workspace/weights}"
export OUTPUT_DIR="${OUTPUT_DIR:-/workspace/output}"

for dir in "$MODEL_CACHE_DIR" "$OUTPUT_DIR"; do
    if ! mkdir -p "$dir" 2>/dev/null || [[ ! -w "$dir" ]]; then
        log "ERROR: $dir is not writable -> mount a writable volume there (RunPod: volume mount path /workspace)"
        exit 6
    fi
done

# Fail fast on the wrong host: when a GPU is expected (a driver is visible, or RunPod says it gave GPUs) the
# driver must run CUDA 13.0 and torch must see the device; otherwise stop with one line naming RunPod's
# "CUDA 13.0+" filter (exit 12). MATTEPOD_GPU_CHECK: auto (default), require, off.
if [[ "${MATTEPOD_GPU_CHECK:-auto}" != "off" ]]; then
    status=0
    "$python_bin" -m mattepod.gpuhealth || status=$?
    if (( status != 0 )); then exit "$status"; fi
fi

if [[ "${MODELS:-}" == "none" ]]; then
    log "MODELS=none: skipping the weights check"
else
    # scripts/download_models.py reads MODELS, MODEL_CACHE_DIR, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE itself.
    "$python_bin" "$app_dir/scripts/download_models.py" --weights-dir "$MODEL_CACHE_DIR"
fi

if [[ "${ENCODER_PROBE:-1}" == "1" ]]; then
    # Non-fatal: without a working NVENC the pipeline falls back to libx264/libx265.
    "$python_bin" -m mattepod.media.encoders || log "encoder probe failed; CPU encoders will be used"
fi
log "ready"
