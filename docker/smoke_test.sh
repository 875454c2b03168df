#!/usr/bin/env bash
# Smoke test of the two built images with a real container engine, before anything is pushed
# (.github/workflows/image.yml). The same checks as docker/rehearse.sh, through `docker run`:
#   1. UI image, MODELS=none: starts, its health check passes, `docker stop` (SIGTERM) ends it within 10 s;
#   2. serverless image: one --test_input job with the mask engine on a clip made by the image's own ffmpeg,
#      outputs on the volume.
# Usage: docker/smoke_test.sh UI_IMAGE SERVERLESS_IMAGE   (DOCKER=podman to use another engine)
set -Eeuo pipefail

ui="${1:?usage: smoke_test.sh UI_IMAGE SERVERLESS_IMAGE}"
sls="${2:?usage: smoke_test.sh UI_IMAGE SERVERLESS_IMAGE}"
engine="${DOCKER:-docker}"
vol="$(mktemp -d)"
cid=""

log() { printf '[smoke] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; if [[ -n "$cid" ]]; then "$engine" logs "$cid" 2>&1 | tail -n 40 >&2 || true; fi; exit 1; }
cleanup() {
    if [[ -n "$cid" ]]; then "$engine" rm -f "$cid" >/dev/null 2>&1 || true; fi
    rm -rf "$vol" 2>/dev/null || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. the UI image
mkdir -p "$vol/ui"
cid="$("$engine" run -d -e MODELS=none -v "$vol/ui:/workspace" "$ui")"
healthy=0
for _ in $(seq 1 150); do
    if [[ "$("$engine" inspect --format '{{.State.Running}}' "$cid")" != "true" ]]; then
        fail "the UI container exited before it was healthy"
    fi
    # The image's own HEALTHCHECK command, run now instead of waiting for the engine's interval.
    if "$engine" exec "$cid" python /opt/mattepod/docker/healthcheck.py; then healthy=1; break; fi
    sleep 2
done
(( healthy == 1 )) || fail "the UI did not become healthy in 300 s"
log "UI healthy"
t0=$SECONDS
"$engine" stop -t 10 "$cid" >/dev/null
stop_s=$((SECONDS - t0))
rc="$("$engine" inspect --format '{{.State.ExitCode}}' "$cid")"
[[ "$rc" == "143" || "$rc" == "0" ]] || fail "exit code $rc after docker stop (expected 143: SIGTERM reached the app)"
(( stop_s <= 10 )) || fail "docker stop took ${stop_s}s (the app ignored SIGTERM)"
log "UI stopped by SIGTERM in ${stop_s}s (exit $rc)"
"$engine" rm -f "$cid" >/dev/null
cid=""

# ---------------------------------------------------------------- 2. the serverless image
mkdir -p "$vol/sls/in"
"$engine" run --rm --entrypoint ffmpeg -v "$vol/sls:/runpod-volume" "$sls" -v error -y -f lavfi \
    -i testsrc2=size=64x48:rate=10 -frames:v 20 -c:v libx264 -pix_fmt yuv420p /runpod-volume/in/clip.mp4
"$engine" run --rm --entrypoint python -v "$vol/sls:/runpod-volume" "$sls" -c \
    "import numpy as np; from PIL import Image; m = np.zeros((48, 64), np.uint8); m[12:36, 16:48] = 255; Image.fromarray(m).save('/runpod-volume/mask.png')"
job='{"id": "smoke", "input": {"video": "in/clip.mp4", "prompt": {"mask": "mask.png"}, "outputs": ["alpha"],
      "config": {"engine": {"name": "mask"}}, "run_name": "smoke"}}'
"$engine" run --rm -e MODELS=none -v "$vol/sls:/runpod-volume" "$sls" \
    python -m mattepod.serverless --test_input "$job" || fail "the serverless --test_input job failed"
result="$vol/sls/output/smoke/serverless_result.json"
[[ -f "$result" ]] || fail "no $result"
grep -q '"status": "completed"' "$result" || fail "the job did not complete: $(cat "$result")"
compgen -G "$vol/sls/output/smoke/*_alpha.mp4" >/dev/null || fail "no alpha output on the volume"
log "serverless job completed, outputs on the volume"
printf '{"ui": "healthy", "ui_stop_s": %d, "ui_exit": %s, "serverless": "completed"}\n' "$stop_s" "$rc"
