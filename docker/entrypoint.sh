#!/usr/bin/env bash
# PID 1 is tini (Dockerfile ENTRYPOINT); this script runs the start-up setup, then exec's the app so that
# SIGTERM/SIGINT reach Python directly. Usage:
#   docker run IMAGE                    -> runs $STARTUP_COMMAND (default: the Gradio UI)
#   docker run IMAGE CMD ARGS...        -> runs CMD ARGS... instead (e.g. infer_video.sh clip.mp4)
set -Eeuo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[entrypoint] %s\n' "$*" >&2; }

# An empty variable (a RunPod template field left blank) means "not set": huggingface_hub would otherwise take
# HF_ENDPOINT="" as the hub's address.
for name in HF_ENDPOINT HF_TOKEN HF_HOME HF_HUB_OFFLINE HF_HUB_ETAG_TIMEOUT MODELS MATTEPOD_WEIGHTS_MANIFEST \
            MATTEPOD_FFMPEG_DIR HEALTHCHECK_URL STARTUP_COMMAND PORT PUBLIC_KEY SSH_PORT; do
    if [[ -z "${!name-}" ]]; then unset "$name"; fi
done

export PORT="${PORT:-7860}"
export GRADIO_SERVER_PORT="${GRADIO_SERVER_PORT:-$PORT}"
export GRADIO_SERVER_NAME="${GRADIO_SERVER_NAME:-0.0.0.0}"
export MODEL_CACHE_DIR="${MODEL_CACHE_DIR:-/workspace/weights}"
export OUTPUT_DIR="${OUTPUT_DIR:-/workspace/output}"
startup_command="${STARTUP_COMMAND:-python /opt/mattepod/app/gradio_app.py}"

# RunPod pods: with PUBLIC_KEY set (the account's SSH keys) start sshd the way RunPod's own images do, so
# scp/rsync reach the volume for big files. Host keys are made per container (none are baked into the image).
# Never fatal: the app starts without SSH.
start_sshd() {
    local sshd=/usr/sbin/sshd home="${HOME:-/root}"
    if [[ ! -x "$sshd" ]]; then
        log "PUBLIC_KEY is set but sshd is not installed; no SSH"
        return 0
    fi
    mkdir -p "$home/.ssh" /run/sshd
    chmod 700 "$home/.ssh"
    touch "$home/.ssh/authorized_keys"
    grep -qxF "$PUBLIC_KEY" "$home/.ssh/authorized_keys" || printf '%s\n' "$PUBLIC_KEY" >>"$home/.ssh/authorized_keys"
    chmod 600 "$home/.ssh/authorized_keys"
    ssh-keygen -A >/dev/null
    "$sshd" -p "${SSH_PORT:-22}" -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password
    log "sshd listening on port ${SSH_PORT:-22} (key login only)"
}
if [[ -n "${PUBLIC_KEY:-}" ]]; then
    start_sshd || log "sshd did not start; continuing without SSH"
fi

if [[ "${SKIP_RUNTIME_SETUP:-0}" == "1" ]]; then
    log "SKIP_RUNTIME_SETUP=1: not checking weights"
else
    status=0
    "$here/runtime_setup.sh" || status=$?
    if (( status != 0 )); then
        log "runtime setup failed (exit $status); not starting. Fix the error above and restart the container."
        exit "$status"
    fi
fi

if [[ -n "${RUNPOD_POD_ID:-}" ]]; then
    log "RunPod pod $RUNPOD_POD_ID: open https://${RUNPOD_POD_ID}-${PORT}.proxy.runpod.net"
fi

if (( $# > 0 )); then
    log "exec: $*"
    exec "$@"
fi
log "exec STARTUP_COMMAND: $startup_command"
# bash -c parses quotes the way a shell user expects and execs a simple command in place (same PID);
# for a compound command tini -g still signals the whole process group.
exec bash -c "$startup_command"
