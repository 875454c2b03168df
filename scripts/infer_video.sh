#!/usr/bin/env bash
# Matte one video, a folder of videos, or a list of videos: one run folder per video
# (<output-dir>/<stem>); a re-run skips completed videos and resumes interrupted ones.
# Thin wrapper: parses flags into an argv array and execs `python -m mattepod.batch`.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: infer_video.sh -i INPUT [-i INPUT ...] [prompt] [options]

Input (repeatable):
  -i, --input PATH        video file, folder of videos, or list file (.txt/.list: one path a line,
                          optionally TAB + mask path; relative paths are relative to the list)
Prompt (one of them, unless the config sets prompt.*):
  -m, --mask PATH         mask PNG for every video, or a folder of <video-stem>.png masks
  -p, --points "x,y,l;.." SAM 2 clicks (l = 1 subject, 0 background)
  -b, --box x0,y0,x1,y1   SAM 2 box
  -a, --auto-person       find the person automatically
      --prompt-frame K    frame the prompt is given on (default 0)
Outputs and config:
  -o, --outputs LIST      comma list: alpha,green,composite,prores,webm,png,alpha16,packed
  -d, --output-dir DIR    where the run folders go (default: config output_dir / $OUTPUT_DIR)
  -c, --config FILE       run config YAML (see configs/generate.yaml)
  -w, --weights-dir DIR   model weights folder (default: $MODEL_CACHE_DIR, else ./weights)
  -e, --engine NAME       matanyone (default) or mask (no weights; a check of prompts and plumbing)
      --set KEY=VALUE     any config key, repeatable (e.g. --set engine.warmup=5)
      --start-frame N     first frame to process
      --max-frames N      process at most N frames
      --scale S           matting resolution relative to the input (0 < S <= 1)
Batch:
      --skip-failed       do not retry videos that failed before
      --dry-run           print video, run folder and action (new/resume/skip), run nothing
      --summary-json F    write the summary table as JSON here
  -q, --quiet             no per-frame progress lines
  -h, --help              this help

Exit status: 0 all videos completed (or were already), 1 some failed (see the summary table),
2 bad flags/config, 3 input not found, 130 cancelled. Environment: MATTEPOD_PYTHON (python to use).
Example: scripts/infer_video.sh -i /workspace/videos -a -o alpha,green -d /workspace/output
In the container: docker run --gpus all -v /workspace:/workspace IMAGE scripts/infer_video.sh -i ...
USAGE
}

die() {
  printf 'infer_video.sh: %s (see --help)\n' "$1" >&2
  exit 2
}

need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}

args=()
have_input=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -i | --input) need_value "$@"; args+=(--input "$2"); have_input=1; shift 2 ;;
    -m | --mask) need_value "$@"; args+=(--mask "$2"); shift 2 ;;
    -p | --points) need_value "$@"; args+=(--points "$2"); shift 2 ;;
    -b | --box) need_value "$@"; args+=(--box "$2"); shift 2 ;;
    -a | --auto-person) args+=(--auto-person); shift ;;
    --prompt-frame) need_value "$@"; args+=(--prompt-frame "$2"); shift 2 ;;
    -o | --outputs) need_value "$@"; args+=(--outputs "$2"); shift 2 ;;
    -d | --output-dir) need_value "$@"; args+=(--output-dir "$2"); shift 2 ;;
    -c | --config) need_value "$@"; args+=(--config "$2"); shift 2 ;;
    -w | --weights-dir) need_value "$@"; args+=(--weights-dir "$2"); shift 2 ;;
    -e | --engine) need_value "$@"; args+=(--set "engine.name=$2"); shift 2 ;;
    --set) need_value "$@"; args+=(--set "$2"); shift 2 ;;
    --start-frame | --max-frames | --scale | --summary-json)
      need_value "$@"; args+=("$1" "$2"); shift 2 ;;
    --skip-failed | --dry-run) args+=("$1"); shift ;;
    -q | --quiet) args+=(--quiet); shift ;;
    *) die "unknown flag: $1" ;;
  esac
done
[[ $have_input -eq 1 ]] || die "no input: give -i FILE|FOLDER|LIST"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"
python_bin="${MATTEPOD_PYTHON:-}"
if [[ -z "$python_bin" ]]; then
  # The image's interpreter is `python`; a bare host may only have python3.
  if command -v python >/dev/null 2>&1; then python_bin=python; else python_bin=python3; fi
fi
command -v "$python_bin" >/dev/null 2>&1 || die "python not found: $python_bin (set MATTEPOD_PYTHON)"
exec "$python_bin" -m mattepod.batch "${args[@]}"
