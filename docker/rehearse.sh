#!/usr/bin/env bash
# Build the real Dockerfile with a real OCI builder (podman/buildah), then start the built images from their own
# filesystems and check what a RunPod host would see. Called by .ci/run; BUILD.md "The rehearsal" explains it.
#
#   1. debootstrap the base (Debian bookworm, minbase) and import it under the Dockerfile's FROM name;
#   2. podman build both targets from the unchanged Dockerfile (--pull=never: nothing comes from a registry);
#   3. docker/rehearse_start.py starts each image's ENTRYPOINT/CMD/ENV/WORKDIR in a chroot of the image
#      (podman run is refused in some sandboxes: crun cannot set rlimits there): the UI starts with MODELS=none,
#      its HEALTHCHECK passes and SIGTERM stops it; runtime_setup fetches generated weights from a fake hub and a
#      second start makes zero requests; the serverless worker runs one --test_input job.
# The last line of stdout is one JSON object with the figures. Any failure exits non-zero with a line saying
# which step failed. The podman store (several GB) is removed at the end unless REHEARSE_KEEP=1.
#
# Environment: REHEARSE_DIR (work folder, default /var/tmp/mattepod-rehearse), REHEARSE_ALLOW_SKIP=1 (exit 0 with
# {"status": "skipped"} when this machine cannot build: not root, no podman/debootstrap; CI never sets it),
# DEBIAN_MIRROR, PYTHON (host Python with the project's dependencies, default python3), PODMAN (its binary), and
# the pip settings passed into the build only when set: PIP_CERT (or SSL_CERT_FILE), PIP_INDEX_URL, PIP_FIND_LINKS.
set -Eeuo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${REHEARSE_DIR:-/var/tmp/mattepod-rehearse}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
python_bin="${PYTHON:-python3}"
podman="${PODMAN:-podman}"
store=(--root "$work/store" --runroot "$work/run" --storage-driver overlay)
ui_image="localhost/mattepod-rehearse:ui"
sls_image="localhost/mattepod-rehearse:serverless"
step="preflight"

log() { printf '[rehearse] %s\n' "$*" >&2; }
fail() { log "FAILED at step '$step': $*"; exit 1; }
trap 'log "FAILED at step '"'"'$step'"'"' (line $LINENO, exit $?)"' ERR

skip_or_fail() {
    if [[ "${REHEARSE_ALLOW_SKIP:-0}" == "1" ]]; then
        log "SKIPPED: $1"
        printf '{"status": "skipped", "reason": "%s"}\n' "$1"
        exit 0
    fi
    fail "$1 (set REHEARSE_ALLOW_SKIP=1 to skip on machines that cannot build)"
}

cleanup() {
    local rc=$? mounts m
    set +e  # best effort: every step runs, the rehearsal's own exit status is kept
    trap - ERR
    if [[ "${REHEARSE_KEEP:-0}" == "1" ]]; then
        log "REHEARSE_KEEP=1: leaving the store in $work"
        return "$rc"
    fi
    "$podman" "${store[@]}" image unmount --all >/dev/null 2>&1
    "$podman" "${store[@]}" rmi --all --force >/dev/null 2>&1
    # Leftover mounts under the work folder (a crashed start) would make rm fail: unmount them, deepest first.
    mounts="$(grep -o " $work/[^ ]*" /proc/self/mounts | sort -r)"
    for m in $mounts; do umount -l "$m" 2>/dev/null; done
    rm -rf "$work"
    if [[ -e "$work" ]]; then log "could not remove $work: remove it by hand"; else log "store removed ($work)"; fi
    return "$rc"
}

# ---------------------------------------------------------------- preflight
command -v "$podman" >/dev/null || skip_or_fail "podman is not installed (apt-get install podman)"
command -v debootstrap >/dev/null || skip_or_fail "debootstrap is not installed (apt-get install debootstrap)"
(( EUID == 0 )) || skip_or_fail "needs root (debootstrap, chroot, mounts)"
"$python_bin" -c "import mattepod, numpy, PIL" 2>/dev/null \
    || fail "$python_bin cannot import the project (activate the venv or set PYTHON)"
base="$(awk 'toupper($1) == "FROM" { print $2; exit }' "$repo/Dockerfile")"
[[ "$base" == debian:bookworm* ]] || fail "the Dockerfile's base is $base; only debian:bookworm* can be bootstrapped here"
free_gb="$(df -P --block-size=1G "$(dirname "$work")" | awk 'NR == 2 { print $4 }')"
(( free_gb >= 20 )) || fail "only ${free_gb} GB free under $(dirname "$work"); the build needs about 20 GB"

trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work"
t_all=$SECONDS

# ---------------------------------------------------------------- base
step="bootstrap"
t0=$SECONDS
log "debootstrap --variant=minbase bookworm ($mirror) ..."
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap failed (log above)"; }
# What debian:bookworm-slim carries: the main, updates and security suites, no package lists, no caches.
cat >"$work/rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/cache/apt/archives/"*.deb
tar -C "$work/rootfs" --numeric-owner -cf - . \
    | "$podman" "${store[@]}" import --change 'CMD ["bash"]' - "docker.io/library/$base" >/dev/null
"$podman" "${store[@]}" tag "docker.io/library/$base" "localhost/$base"
rm -rf "$work/rootfs"
t_bootstrap=$((SECONDS - t0))
log "base $base imported in ${t_bootstrap}s"

# ---------------------------------------------------------------- build
build_args=(--format docker --isolation chroot --pull=never -f "$repo/Dockerfile"
            --build-arg "VCS_REF=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)")
cert="${PIP_CERT:-${SSL_CERT_FILE:-}}"
if [[ -n "$cert" ]]; then
    [[ -f "$cert" ]] || fail "PIP_CERT/SSL_CERT_FILE=$cert is not a file"
    build_args+=(--volume "$cert:/run/build-ca.pem:ro" --build-arg PIP_CERT=/run/build-ca.pem)
    log "pip in the build trusts $cert (mounted read-only, not stored in the image)"
fi
if [[ -n "${PIP_INDEX_URL:-}" ]]; then
    build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
fi
if [[ -n "${PIP_FIND_LINKS:-}" ]]; then
    for link in $PIP_FIND_LINKS; do
        if [[ -d "$link" ]]; then build_args+=(--volume "$link:$link:ro"); fi
    done
    build_args+=(--build-arg "PIP_FIND_LINKS=$PIP_FIND_LINKS")
fi

step="build serverless"
t0=$SECONDS
log "podman build --target serverless ..."
"$podman" "${store[@]}" build "${build_args[@]}" --target serverless -t "$sls_image" "$repo" >"$work/build-serverless.log" 2>&1 \
    || { tail -n 40 "$work/build-serverless.log" >&2; fail "podman build --target serverless failed (log above)"; }
t_build_sls=$((SECONDS - t0))
step="build ui"
t0=$SECONDS
log "podman build --target ui (shares the serverless build's layers) ..."
"$podman" "${store[@]}" build "${build_args[@]}" --target ui -t "$ui_image" "$repo" >"$work/build-ui.log" 2>&1 \
    || { tail -n 40 "$work/build-ui.log" >&2; fail "podman build --target ui failed (log above)"; }
t_build_ui=$((SECONDS - t0))
grep -E "^imports ok" "$work/build-serverless.log" >&2 || true

step="sizes"
size_mb() { "$podman" "${store[@]}" image inspect --format '{{.Size}}' "$1" | awk '{ printf "%d", $1 / 1000000 }'; }
base_mb="$(size_mb "docker.io/library/$base")"
ui_mb="$(size_mb "$ui_image")"
sls_mb="$(size_mb "$sls_image")"
log "sizes: base ${base_mb} MB, ui ${ui_mb} MB, serverless ${sls_mb} MB"

# ---------------------------------------------------------------- start the images
step="start"
for target in ui serverless; do
    image="localhost/mattepod-rehearse:$target"
    "$podman" "${store[@]}" image inspect "$image" >"$work/$target.inspect.json"
    mnt="$("$podman" "${store[@]}" image mount "$image")"
    printf '%s\n' "$mnt" >"$work/$target.mount"
done
cat >"$work/build.json" <<EOF
{"base": "$base", "bootstrap_s": $t_bootstrap, "build_serverless_s": $t_build_sls, "build_ui_s": $t_build_ui,
 "size_mb": {"base": $base_mb, "ui": $ui_mb, "serverless": $sls_mb}}
EOF
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python_bin" "$repo/docker/rehearse_start.py" \
    --work "$work" --build "$work/build.json" --result "$work/result.json" \
    || fail "starting the built images failed (see the lines above)"
step="done"
total=$((SECONDS - t_all))
log "rehearsal passed in ${total}s (before removing the store)"
"$python_bin" -c 'import json, sys; print(json.dumps({"status": "passed", **json.load(open(sys.argv[1])), "total_s": int(sys.argv[2])}))' \
    "$work/result.json" "$total"
