"""MattePod web app (Gradio 6): pick a frame, prompt the subject, run a matting job, download the matte.

The page is split by what each part owns:
- ``app/state.py``     the one prompt state and the only function that changes it (no I/O, no Gradio);
- ``app/handlers.py``  what each control does, as plain functions over the app and the prompt state;
- ``app/media.py``     frames (one seek each), overlays, brush strokes, uploads, the volume listing;
- ``app/server.py``    what the process holds: volumes, base config, the job queue, SAM 2;
- ``app/layout.py``    the components and their wiring; ``app/api.py`` the named endpoints.
Every run is a separate job process from ``mattepod.jobs``, so a crashed job never takes the app down, Cancel
stops it for real, and jobs outlive the browser tab and the app (a reopened page reattaches).

    python app/gradio_app.py        # env: GRADIO_SERVER_NAME/PORT, GRADIO_USERNAME/PASSWORD or APP_PASSWORD,
                                    # INPUT_DIR, OUTPUT_DIR, MODEL_CACHE_DIR, GRADIO_ROOT_PATH, GRADIO_MAX_FILE_SIZE
"""

from __future__ import annotations

import hmac
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python app/gradio_app.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.middleware import Middleware  # noqa: E402

from app.layout import CSS, build_app  # noqa: E402
from app.login import LoginPage  # noqa: E402
from app.server import AppState, settings  # noqa: E402
from mattepod import jobs  # noqa: E402

log = logging.getLogger("mattepod.app")
__all__ = ["AppState", "build_app", "auth_checker", "settings", "main"]


def auth_checker(username: str | None, password: str | None):
    """A constant-time check for launch(auth=...): user+password, or the password alone (APP_PASSWORD)."""
    if not password:
        return None

    def check(user: str, pw: str) -> bool:
        ok_pw = hmac.compare_digest((pw or "").encode(), password.encode())
        ok_user = username is None or hmac.compare_digest((user or "").encode(), username.encode())
        return ok_pw and ok_user

    return check


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = settings()
    roots = jobs.Roots.from_env()
    state = AppState(roots, cfg["base_config"])
    state.prefetch(state.default_sam_model())  # the predictor is ready before the first video arrives
    demo = build_app(state)
    auth = auth_checker(cfg["username"], cfg["password"])
    if auth is None:
        banner = "!" * 78
        log.warning("\n%s\n!!  NO PASSWORD SET: anyone who can reach this port can use the app and read the\n"
                    "!!  input/output folders. Set GRADIO_USERNAME + GRADIO_PASSWORD (or APP_PASSWORD).\n%s",
                    banner, banner)
    demo.queue(default_concurrency_limit=4)
    # our sign-in page in front of Gradio's /login (app/login.py: keeps the username after a wrong password)
    login = {"middleware": [Middleware(LoginPage)]} if auth else None
    demo.launch(
        app_kwargs=login,
        server_name=cfg["server_name"], server_port=cfg["server_port"], share=False, auth=auth,
        auth_message="MattePod" if auth else None, root_path=cfg["root_path"], max_file_size=cfg["max_file_size"],
        allowed_paths=[str(roots.input), str(roots.output)], ssr_mode=False, footer_links=["api"],
        show_error=True, css=CSS)


if __name__ == "__main__":
    main()
