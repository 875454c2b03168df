#!/usr/bin/env bash
# Matte VR180 videos (two eyes in one frame): the same batch as infer_video.sh with stereo.mode=vr180.
# Parses the VR180 flags, passes everything else on to infer_video.sh, which execs mattepod.batch.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: infer_vr180.sh -i INPUT [-i INPUT ...] [prompt] [VR180 options] [infer_video.sh options]

VR180 options:
      --layout L          auto (default: file name tokens, metadata, shape), sbs or tb
      --master EYE        left (default) or right: the eye the prompt is given on
      --projection P      auto, equirect or fisheye
      --fov DEG           field of view of the packed fisheye output (default 180)
      --packed            add the alpha-packed passthrough output (outputs: packed)
      --reprompt-on-drift re-prompt the slave eye from the master when the eyes disagree

Every flag of infer_video.sh works here too (input, prompt, outputs, config, batch):

USAGE
  "$(dirname "${BASH_SOURCE[0]}")/infer_video.sh" --help | sed -n '/^Input/,$p'
}

die() {
  printf 'infer_vr180.sh: %s (see --help)\n' "$1" >&2
  exit 2
}

need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}

args=(--set stereo.mode=vr180)
outputs=""
packed=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --layout) need_value "$@"; args+=(--set "stereo.layout=$2"); shift 2 ;;
    --master) need_value "$@"; args+=(--set "stereo.master=$2"); shift 2 ;;
    --projection) need_value "$@"; args+=(--set "stereo.projection=$2"); shift 2 ;;
    --fov) need_value "$@"; args+=(--set "stereo.fov=$2"); shift 2 ;;
    --reprompt-on-drift) args+=(--set stereo.reprompt_on_drift=true); shift ;;
    --packed) packed=1; shift ;;
    -o | --outputs) need_value "$@"; outputs="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ $packed -eq 1 ]]; then
  outputs="${outputs:-alpha},packed"
fi
if [[ -n "$outputs" ]]; then
  args+=(--outputs "$outputs")
fi
exec "$(dirname "${BASH_SOURCE[0]}")/infer_video.sh" "${args[@]}"
