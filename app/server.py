"""What one app process holds: the volumes, the base config, the job queue and the SAM 2 predictors.

Shared by every browser session; the per-session prompt lives in ``app.state.PromptState``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from app import persist
from mattepod import config as configmod
from mattepod import jobs
from mattepod.errors import MattePodError

log = logging.getLogger("mattepod.app")


def settings() -> dict[str, Any]:
    """Everything the app reads from the environment (``mattepod.settings``, the one typed settings module;
    documented in CONFIG.md)."""
    from mattepod import settings as envmod

    env = envmod.get()
    return {
        "server_name": env.gradio_server_name,
        "server_port": env.gradio_server_port,
        "root_path": env.gradio_root_path,
        "max_file_size": env.gradio_max_file_size,
        "username": env.gradio_username,
        "password": env.gradio_password or env.app_password,
        "base_config": env.config,
    }


class AppState:
    """Roots, the job queue, the SAM 2 predictor (loaded once, reused; embeddings kept for a few frames)."""

    def __init__(self, roots: jobs.Roots, base_config: str | None = None,
                 manager: jobs.JobManager | None = None):
        self.roots = roots
        for root in (roots.input, roots.output):
            root.mkdir(parents=True, exist_ok=True)
        self.base = configmod.load(base_config) if base_config else configmod.Config()
        self.manager = manager or jobs.JobManager(roots.output)
        # each browser's prompt, kept across reloads and restarts (app/persist.py)
        self.prompts = persist.PromptStore(roots.output / ".prompts")
        self.prompts.prune()
        self._sam_lock = threading.Lock()
        self.sam_errors: dict[str, str] = {}  # model -> why it cannot be loaded (shown instead of "loading")

    def default_sam_model(self) -> str:
        """The base config's choice when it makes one, else by device (tiny on CPU, base_plus on GPU)."""
        from mattepod import sam

        if "sam2_model" in self.base.prompt.model_fields_set:
            return self.base.prompt.sam2_model
        return sam.default_size(self.base.engine.device)

    def sam_available(self, model: str) -> bool:
        """The weights for ``model`` are in the weights folder (loading may still be under way)."""
        from mattepod import weights

        try:
            weights.require(f"sam2.1_{model}", self.roots.weights)
            return True
        except MattePodError:
            return False

    def prompter(self, model: str):
        """The SAM 2 image predictor for ``model``; None while its weights are not in the weights folder
        (they may still be downloading) or it cannot be loaded (logged once, the page falls back to jobs)."""
        from mattepod import sam, weights

        try:
            weights.require(f"sam2.1_{model}", self.roots.weights)
        except MattePodError:
            return None
        with self._sam_lock:
            try:
                prompter = sam.get_prompter(model, self.roots.weights, self.base.engine.device)
                self.sam_errors.pop(model, None)
                return prompter
            except MattePodError as err:
                if model not in self.sam_errors:
                    log.warning("SAM 2 %s cannot be loaded: %s", model, err)
                self.sam_errors[model] = str(err)
                return None

    def prefetch(self, model: str, image: np.ndarray | None = None) -> None:
        """Load the predictor and embed ``image`` in the background (stale requests are dropped), so the
        first click only runs the mask decoder."""

        def work() -> None:
            try:
                prompter = self.prompter(model)
                if prompter is not None and image is not None:
                    prompter.request(np.array(image, dtype=np.uint8, order="C"))
            except Exception as exc:  # noqa: BLE001 - a failed prefetch only costs the first click its speed
                log.warning("SAM 2 prefetch failed: %s", exc)

        threading.Thread(target=work, name="sam2-prefetch", daemon=True).start()

    def sam_state(self, model: str, image: np.ndarray | None) -> str:
        """'ready' / 'embedding' / 'waiting' / 'idle' for the image shown, 'missing' without weights."""
        from mattepod import weights

        try:
            weights.require(f"sam2.1_{model}", self.roots.weights)
        except MattePodError:
            return "missing"
        from mattepod import sam

        if model in self.sam_errors:
            return "failed"
        try:
            key = (model, str(self.roots.weights.resolve()), sam.resolve_device(self.base.engine.device))
        except MattePodError as err:
            self.sam_errors[model] = str(err)
            return "failed"
        prompter = sam._PROMPTERS.get(key)
        if prompter is None:
            return "loading"
        return prompter.state(np.ascontiguousarray(image)) if image is not None else "idle"

    def segmenter(self, model: str, image: np.ndarray):
        """A ``segment(points, box)`` for app.state on this image, or None without SAM 2."""
        prompter = self.prompter(model)
        if prompter is None:
            return None
        frame = np.array(image, dtype=np.uint8, order="C")

        def segment(points: list, box: list | None) -> np.ndarray:
            return np.asarray(prompter.mask_for(frame, [tuple(p) for p in points], box, False), np.float32)

        return segment
