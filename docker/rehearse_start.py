"""Start the rehearsal's built images from their own filesystems and check them (run by docker/rehearse.sh).

``podman run`` is refused in some sandboxes (crun cannot set rlimits), so each start does what a container
runtime does, by hand: a writable overlay on the read-only image mount, ``/dev`` and a volume folder bound in,
``/etc/hosts``/``/etc/resolv.conf`` written, a new PID namespace with its own ``/proc`` (tini is PID 1), and the
image's own ENTRYPOINT + CMD, ENV and WORKDIR from its config. The checks:

1. UI image, ``MODELS=none``: the entrypoint starts Gradio, the image's HEALTHCHECK command passes, SIGTERM to
   PID 1 stops it within 10 s.
2. UI image with ``HF_ENDPOINT`` at the tests' FAKE hub on 127.0.0.1 serving generated weights: runtime_setup
   fetches and verifies them into the volume; a second start makes zero requests.
3. Serverless image: one ``--test_input`` job with the ``mask`` engine on a generated clip; its outputs are on the
   volume.

Writes the figures (plus the build's, from ``--build``) as one JSON object to ``--result``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_hf_hub import FakeHub, FakeRepo  # noqa: E402  (the tests' fake hub)

from mattepod.weights import Model, WeightFile, manifest_to_dict  # noqa: E402
from tests.batch_media import make_clip, make_mask  # noqa: E402

STOP_LIMIT_S = 10.0


def log(msg: str) -> None:
    print(f"[rehearse] {msg}", file=sys.stderr, flush=True)


class StartError(RuntimeError):
    """A check of a started image failed; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


@dataclass
class Container:
    """One start of an image: overlay root, mounts, and the image config's ENV/ENTRYPOINT/CMD/WORKDIR."""

    name: str
    image_root: Path
    config: dict
    work: Path
    volume: Path
    volume_at: str
    mounts: list[Path] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.work / self.name / "root"

    def __enter__(self) -> "Container":
        base = self.work / self.name
        for sub in ("root", "upper", "overlay-work"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={self.image_root},upperdir={base / 'upper'},workdir={base / 'overlay-work'}", str(self.root))
        self.mounts.append(self.root)
        sh("mount", "--rbind", "/dev", str(self.root / "dev"))
        sh("mount", "--make-rslave", str(self.root / "dev"))
        self.mounts.append(self.root / "dev")
        target = self.root / self.volume_at.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        sh("mount", "--bind", str(self.volume), str(target))
        self.mounts.append(target)
        # What a container runtime writes into every container.
        (self.root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
        resolv = Path("/etc/resolv.conf")
        (self.root / "etc" / "resolv.conf").write_text(resolv.read_text() if resolv.exists() else "")
        return self

    def __exit__(self, *exc: object) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", str(m)], check=False)
        self.mounts.clear()

    def env(self, **over: str) -> list[str]:
        env = {"HOME": "/root", "HOSTNAME": self.name}  # what docker adds when the image does not set them
        env.update(item.split("=", 1) for item in self.config.get("Env") or [])
        env.update(over)
        return [f"{k}={v}" for k, v in env.items()]

    def command(self, args: list[str] | None) -> list[str]:
        entry = list(self.config.get("Entrypoint") or [])
        cmd = list(args) if args is not None else list(self.config.get("Cmd") or [])
        return entry + cmd

    def popen(self, argv: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
        """argv runs as PID 1 of a new PID namespace, chrooted into the image, with only the image's env."""
        workdir = self.config.get("WorkingDir") or "/"
        return subprocess.Popen(["unshare", "--pid", "--fork", f"--mount-proc={self.root / 'proc'}", "--kill-child",
                                 "chroot", str(self.root), "/usr/bin/env", "-i", "-C", workdir,
                                 *self.env(**env), *argv], **kw)

    def start(self, args: list[str] | None = None, **env: str) -> subprocess.Popen:
        return self.popen(self.command(args), env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, args: list[str] | None = None, timeout: float = 600, **env: str) -> tuple[int, str]:
        proc = self.start(args, **env)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise StartError(f"{self.name}: {' '.join(self.command(args))[:200]} ran over {timeout}s:\n{out[-3000:]}")
        return proc.returncode, out

    def healthcheck(self, **env: str) -> int:
        test = (self.config.get("Healthcheck") or {}).get("Test") or []
        if not test or test[0] != "CMD":
            raise StartError(f"{self.name}: the image has no exec-form HEALTHCHECK (Test={test})")
        proc = self.popen(test[1:], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc.wait(timeout=30)


def pid1(proc: subprocess.Popen) -> int:
    """The host PID of the namespace's PID 1 (unshare --fork's child: tini)."""
    for _ in range(100):
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if kids:
            return int(kids[0])
        time.sleep(0.1)
    raise StartError("the container's PID 1 did not appear")


PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMattePodRehearsalKeyNotARealOne0000000000000 rehearsal"


def ssh_banner(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return s.recv(256).decode(errors="replace").strip()
    except OSError as err:
        return f"no answer ({err})"


def check_ui(c: Container) -> dict:
    port, ssh_port = str(free_port()), free_port()
    t0 = time.monotonic()
    proc = c.start(MODELS="none", PORT=port, ENCODER_PROBE="1", PUBLIC_KEY=PUBLIC_KEY, SSH_PORT=str(ssh_port))
    tini = pid1(proc)
    lines: list[str] = []
    healthy_after = None
    try:
        deadline = t0 + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartError(f"ui: the entrypoint exited with {proc.returncode} before it was healthy:\n"
                                 + proc.stdout.read()[-3000:])
            if c.healthcheck(PORT=port) == 0:
                healthy_after = time.monotonic() - t0
                break
            time.sleep(2)
        if healthy_after is None:
            raise StartError("ui: the HEALTHCHECK did not pass within 300 s")
        log(f"ui: healthy after {healthy_after:.1f}s (HEALTHCHECK {c.config['Healthcheck']['Test'][1:]})")
        ssh = ssh_banner(ssh_port)
        keys = c.root / "root" / ".ssh" / "authorized_keys"
        if not ssh.startswith("SSH-2.0-") or PUBLIC_KEY not in (keys.read_text() if keys.exists() else ""):
            raise StartError(f"ui: PUBLIC_KEY set but sshd is not serving it (banner {ssh!r}, {keys})")
        log(f"ui: sshd answers on port {ssh_port}: {ssh}")
        t_stop = time.monotonic()
        os.kill(tini, signal.SIGTERM)  # what `docker stop` sends to PID 1
        try:
            rc = proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            raise StartError(f"ui: still running {STOP_LIMIT_S:.0f}s after SIGTERM") from None
        stop_s = time.monotonic() - t_stop
        lines = proc.stdout.read().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc not in (0, 143):
        raise StartError(f"ui: exit {rc} after SIGTERM (expected 143 or 0):\n" + "\n".join(lines[-30:]))
    probe = [ln for ln in lines if "[encoders]" in ln]
    log(f"ui: SIGTERM -> exit {rc} in {stop_s:.1f}s; {probe[-1] if probe else 'no encoder line'}")
    return {"health": "healthy", "healthy_after_s": round(healthy_after, 1), "sigterm_exit": rc,
            "stop_s": round(stop_s, 2), "sshd": "ok"}


def check_setup(c: Container) -> dict:
    files = {"org/net": {"config.json": b'{"layers": 2}\n', "net.safetensors": os.urandom(3_000_000)},
             "org/sam": {"sam.pt": os.urandom(2_000_000)}}
    models = {"net": Model("net", "org/net", (WeightFile("config.json"), WeightFile("net.safetensors")),
                           kind="matanyone"),
              "sam": Model("sam", "org/sam", (WeightFile("sam.pt"),))}
    (c.volume / "manifest.json").write_text(json.dumps(manifest_to_dict(models, ("net", "sam"))))
    counts = []
    with FakeHub({repo: FakeRepo(dict(f)) for repo, f in files.items()}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "MATTEPOD_WEIGHTS_MANIFEST": "/workspace/manifest.json",
               "ENCODER_PROBE": "0"}
        for start in (1, 2):
            before = len(hub.requests)
            rc, out = c.run(["true"], timeout=300, **env)
            if rc != 0:
                raise StartError(f"setup start {start}: exit {rc}:\n{out[-3000:]}")
            counts.append(len(hub.requests) - before)
    for repo, names in files.items():
        for name, data in names.items():
            found = list((c.volume / "weights").rglob(name))
            if not found or found[0].read_bytes() != data:
                raise StartError(f"setup: {repo}/{name} is not in the volume's weights folder with the hub's bytes")
    if counts[0] == 0 or counts[1] != 0:
        raise StartError(f"setup: hub requests per start {counts} (expected >0 then 0)")
    log(f"setup: hub requests {counts[0]} on the first start, {counts[1]} on the second")
    return {"setup_requests": counts}


def check_serverless(c: Container) -> dict:
    make_clip(c.volume / "in" / "clip.mp4", frames=20)
    make_mask(c.volume / "mask.png")
    job = {"id": "rehearsal", "input": {"video": "in/clip.mp4", "prompt": {"mask": "mask.png"},
                                        "outputs": ["alpha", "green"], "config": {"engine": {"name": "mask"}},
                                        "run_name": "rehearsal"}}
    env = dict(item.split("=", 1) for item in c.config.get("Env") or [])
    if env.get("RUNPOD_MIN_CUDA_VERSION") != "13.0":
        raise StartError(f"serverless: RUNPOD_MIN_CUDA_VERSION is {env.get('RUNPOD_MIN_CUDA_VERSION')!r}, not 13.0")
    startup = env.get("STARTUP_COMMAND", "").split()
    rc, out = c.run([*startup, "--test_input", json.dumps(job)], timeout=600, MODELS="none", ENCODER_PROBE="0")
    if rc != 0:
        raise StartError(f"serverless: --test_input exit {rc}:\n{out[-3000:]}")
    result_file = c.volume / "output" / "rehearsal" / "serverless_result.json"
    if not result_file.is_file():
        raise StartError(f"serverless: no {result_file}:\n{out[-3000:]}")
    result = json.loads(result_file.read_text())
    outputs = {fmt: c.volume / Path(p).relative_to(c.volume_at) for fmt, p in result.get("outputs", {}).items()}
    if result.get("status") != "completed" or set(outputs) != {"alpha", "green"} \
            or not all(p.is_file() and p.stat().st_size > 0 for p in outputs.values()):
        raise StartError(f"serverless: result {result}")
    log(f"serverless: {result['status']}, outputs {sorted(outputs)} on the volume")
    return {"serverless": result["status"], "serverless_frames": result["metadata"]["frames"]["done"]}


def breakdown(root: Path) -> dict[str, int]:
    """Where the image's megabytes are (du of the mounted image): what BUILD.md's size table explains."""
    site = next((root / "opt" / "venv" / "lib").glob("python3*/site-packages"))
    parts = {"cuda_wheels": site / "nvidia", "torch": site / "torch", "triton": site / "triton",
             "venv": root / "opt" / "venv", "usr": root / "usr"}
    out = {}
    for name, path in parts.items():
        du = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True).stdout.split()
        out[name] = int(du[0]) if du else 0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--build", type=Path, required=True, help="the build figures (JSON) written by rehearse.sh")
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args()
    figures = json.loads(args.build.read_text())

    def image(target: str) -> tuple[Path, dict]:
        """The image's mount point and its config (podman keeps the HEALTHCHECK beside the config)."""
        inspect = json.loads((args.work / f"{target}.inspect.json").read_text())[0]
        health = inspect.get("Healthcheck") or inspect["Config"].get("Healthcheck")
        config = {**inspect["Config"], "Healthcheck": health}
        return Path((args.work / f"{target}.mount").read_text().strip()), config

    t0 = time.monotonic()
    figures["size_breakdown_mb"] = breakdown(image("ui")[0])
    try:
        mnt, cfg = image("ui")
        vol = args.work / "volumes" / "ui"
        vol.mkdir(parents=True)
        with Container("ui", mnt, cfg, args.work, vol, "/workspace") as c:
            figures.update(check_ui(c))
        vol = args.work / "volumes" / "pod"
        vol.mkdir(parents=True)
        with Container("pod", mnt, cfg, args.work, vol, "/workspace") as c:
            figures.update(check_setup(c))
        mnt, cfg = image("serverless")
        vol = args.work / "volumes" / "serverless"
        vol.mkdir(parents=True)
        with Container("serverless", mnt, cfg, args.work, vol, "/runpod-volume") as c:
            figures.update(check_serverless(c))
    except StartError as err:
        log(f"FAILED: {err}")
        return 1
    figures["start_checks_s"] = round(time.monotonic() - t0, 1)
    args.result.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
