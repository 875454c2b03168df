"""Command line: argv -> a validated Config -> pipeline.run. Prints one-line errors and exits with their code.

    python -m mattepod --generate-config my.yaml
    python -m mattepod run my.yaml --input clip.mp4 --mask mask.png --output-dir output/
    python -m mattepod run my.yaml --dry-run
    python -m mattepod run --resume output/clip_20260101-120000
    python -m mattepod eval --pred output/clip_20260101-120000 --gt gt_pngs/ [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from mattepod import config as config_mod
from mattepod import request as rq
from mattepod import settings
from mattepod.errors import ConfigError, MattePodError
from mattepod.paths import Roots, confine, confine_run_dir
from mattepod.subjects import SUBJECT_ARG_HELP, parse_subject_args, person_subjects

log = logging.getLogger("mattepod")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mattepod", description="MattePod video matting (SAM 2 + MatAnyone)")
    p.add_argument("--generate-config", metavar="FILE", help="write the fully commented default config and exit")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="matte a video (or resume a run)")
    r.add_argument("config", nargs="?", help="generate.yaml (default: configs/generate.yaml defaults)")
    r.add_argument("--input", "-i", help="video file or folder of images")
    r.add_argument("--mask", "-m", help="mask PNG of the subject on the prompt frame")
    r.add_argument("--points", help='SAM 2 clicks "x,y,label;..." (label 1 = subject, 0 = not)')
    r.add_argument("--box", help="SAM 2 box x0,y0,x1,y1")
    r.add_argument("--normalized", action="store_true", help="points/box in 0..1 of the frame size")
    r.add_argument("--prompt-frame", type=int, help="frame the prompt is given on (relative to --start-frame)")
    r.add_argument("--auto-person", action="store_true", help="find the person automatically")
    r.add_argument("--person-count", type=int, help="with --auto-person: one subject per person, person1..N "
                   "(largest first), a matte each")
    r.add_argument("--subject", action="append", default=[], metavar="SPEC",
                   help="a named subject (repeat for several): " + SUBJECT_ARG_HELP)
    r.add_argument("--outputs", help="comma-separated formats, e.g. alpha,green,prores")
    r.add_argument("--output-dir", "-o", help="where run folders are created")
    r.add_argument("--run-dir", help="use exactly this run folder (must not hold a run)")
    r.add_argument("--weights-dir", help="model weights folder (default: env MODEL_CACHE_DIR, else ./weights)")
    r.add_argument("--engine", choices=["matanyone", "mask"], help="engine.name")
    r.add_argument("--device", help="engine.device: auto, cpu, cuda, cuda:N")
    r.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="engine.precision")
    r.add_argument("--start-frame", type=int)
    r.add_argument("--max-frames", type=int)
    r.add_argument("--scale", type=float, help="matting resolution relative to the input (0 < s <= 1)")
    r.add_argument("--mode", choices=["mono", "vr180"], help="stereo.mode")
    r.add_argument("--gt", help="ground-truth matte (PNG folder or video): measure the run's matte at the end (quality.gt)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run folder")
    r.add_argument("--dry-run", action="store_true", help="validate, probe the input, print the plan; write nothing")
    r.add_argument("--progress-json", action="store_true", help="one JSON progress line per update on stdout")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="matting quality of a matte against a ground truth (MAD, MSE, Grad, Conn, dtSSD)")
    e.add_argument("--pred", required=True, help="run folder, matte PNG folder or alpha video")
    e.add_argument("--gt", required=True, help="ground-truth matte PNG folder or video")
    e.add_argument("--json", action="store_true", help="print the whole report (per-frame too) as one JSON object")
    e.add_argument("--depth", choices=["field", "native"], default="field",
                   help="field: frames read as 8-bit grey like the published evaluations; native: full precision")
    e.add_argument("--gt-start", type=int, default=0, help="ground-truth frame compared with the first prediction frame")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


def request_from_args(args: argparse.Namespace) -> rq.RunRequest:
    """argv -> the one request model (flags are request fields; --engine/--device/... and --set are overrides)."""
    o: dict[str, Any] = {}
    for attr, key in {"engine": "engine.name", "device": "engine.device", "precision": "engine.precision",
                      "mode": "stereo.mode"}.items():
        if getattr(args, attr) is not None:
            o[key] = getattr(args, attr)
    for item in args.set:
        key, value = config_mod.parse_set(item)
        o[key] = value
    fields: dict[str, Any] = {}
    if args.mask is not None:
        fields["mask"] = args.mask
    if args.points:
        fields["points"] = rq.parse_points(args.points, "--points")
    if args.box:
        fields["box"] = rq.parse_box(args.box, "--box")
    if args.normalized:
        fields["normalized"] = True
    if args.prompt_frame is not None:
        fields["frame"] = args.prompt_frame
    if args.person_count is not None and not args.auto_person:
        raise ConfigError("--person-count needs --auto-person", "add --auto-person")
    if args.person_count is not None and args.person_count < 1:
        raise ConfigError(f"--person-count {args.person_count} must be at least 1", "give 1 or more")
    if args.subject or args.person_count:
        if args.mask or args.points or args.box:
            raise ConfigError("--subject/--person-count replace --mask/--points/--box",
                              'give each subject its prompt: --subject "NAME:mask=FILE"')
        fields["subjects"] = parse_subject_args(args.subject) + (person_subjects(args.person_count)
                                                                if args.person_count else [])
    elif args.auto_person:
        fields["auto_person"] = True
    if getattr(args, "gt", None) is not None:
        o["quality.gt"] = args.gt
    outputs = [f.strip() for f in args.outputs.split(",") if f.strip()] if args.outputs else None
    return rq.parse({"input": args.input, "prompt": fields or None, "outputs": outputs,
                     "start_frame": args.start_frame, "max_frames": args.max_frames, "scale": args.scale,
                     "output_dir": args.output_dir, "weights_dir": args.weights_dir, "overrides": o}, "command line")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted config keys the command line sets (what ``request_from_args`` asks for)."""
    return request_from_args(args).keys()


def local_roots() -> Roots | None:
    """CLI and batch confine paths only when MATTEPOD_ALLOWED_ROOTS names the allowed folders (a container);
    then run folders go there or into OUTPUT_DIR, weights come from there or MODEL_CACHE_DIR."""
    allowed = settings.allowed_roots()
    if allowed is None:
        return None
    env = settings.get()
    write = [*allowed, *([env.output_dir] if env.output_dir else [])]
    return Roots.of(read=allowed, write=write, weights=[*allowed, settings.weights_dir()])


def _default_config_path() -> Path | None:
    here = Path(__file__).resolve().parent.parent / "configs" / "generate.yaml"
    return here if here.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.version:
            from mattepod import __version__

            print(__version__)
            return 0
        if args.generate_config:
            path = Path(args.generate_config)
            if path.exists():
                raise ConfigError(f"{path} exists", "choose a new file name (configs are never overwritten)")
            path.write_text(config_mod.render_yaml())
            print(f"wrote {path}")
            return 0
        if args.command == "eval":
            from mattepod.quality import eval_command

            return eval_command(args.pred, args.gt, as_json=args.json, depth=args.depth, gt_start=args.gt_start,
                                quiet=args.quiet)
        if args.command != "run":
            parser.print_help()
            return 2
        return _run(args)
    except MattePodError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def _run(args: argparse.Namespace) -> int:
    if args.resume:
        extra = [a for a in ("config", "input", "mask", "points", "box") if getattr(args, a)]
        if extra:
            raise ConfigError(f"--resume takes the run's own config; drop {', '.join('--' + e for e in extra)}",
                              "resume with: run --resume RUN_DIR")
        roots = local_roots()
        resume = args.resume
        if roots is not None:  # the run folder and the paths its own config.yaml names obey the rule too
            resume = str(confine_run_dir(args.resume, roots, "--resume"))
            if (Path(resume) / "config.yaml").is_file():
                confine(config_mod.load(Path(resume) / "config.yaml"), roots)
        from mattepod import pipeline  # torch and the models: only once a run really starts

        res = pipeline.run(config_mod.Config(), pipeline.RunOptions(
            resume=resume, progress_json=args.progress_json, progress_bar=not args.quiet))
        _report(res, args)
        return 0
    roots = local_roots()
    cfg = rq.to_config(request_from_args(args), base=args.config or _default_config_path(), roots=roots,
                       source=str(args.config or "config"))
    run_dir = args.run_dir
    if run_dir is not None:
        safe = Path(run_dir)
        if roots is not None:
            safe = confine_run_dir(run_dir, roots, "--run-dir")
        run_dir = str(safe)
    if args.dry_run:
        from mattepod.plan import plan  # ffprobe only: a dry run never imports torch

        print(json.dumps({"plan": plan(cfg), "config": cfg.model_dump(mode="json")}, indent=2))
        return 0
    from mattepod import pipeline  # torch and the models: only once a run really starts

    res = pipeline.run(cfg, pipeline.RunOptions(run_dir=run_dir, progress_json=args.progress_json,
                                                progress_bar=not args.quiet))
    _report(res, args)
    return 0


def _report(res: Any, args: argparse.Namespace) -> None:
    if not args.progress_json:
        print(f"completed: {res.run_dir}")
        for fmt, name in res.outputs.items():
            print(f"  {fmt}: {res.run_dir / name}")
        quality = res.metadata.get("quality")
        if quality:
            from mattepod.quality import report_lines

            print("\n".join(report_lines(quality, res.run_dir)))
