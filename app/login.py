"""The sign-in page: Gradio's own auth (its /login route, its tokens and cookies), our page in front of it.

Why: Gradio 6.31's login form (``templates/frontend/assets/Login-*.js``) empties *both* fields when /login
answers 400, so a wrong password also throws away the username, and it says only "Incorrect Credentials".
The form is compiled into Gradio's frontend; it cannot be configured. So :class:`LoginPage` (an ASGI
middleware given to Gradio's FastAPI app through ``launch(app_kwargs=...)``) answers ``GET /`` for a browser
that is not signed in with a small page of our own, which posts to Gradio's /login exactly as Gradio's form
does, keeps the username, clears only the password and says "Wrong username or password". Everything that
decides who is signed in stays Gradio's: the checker given to ``launch(auth=...)``, the token it stores and
the httponly cookies it sets. A signed-in browser (a valid token cookie) gets Gradio's page untouched.

Wrong passwords are slowed down: attempts at /login are taken one at a time, and after a failed one the next
waits :data:`FAIL_DELAY_S` -- at most one wrong guess per second, whoever sends them, with no lock-out a
stranger could use to keep the owner out.
"""

from __future__ import annotations

import asyncio
import html
import logging

from starlette.requests import Request
from starlette.responses import HTMLResponse

log = logging.getLogger("mattepod.app")

FAIL_DELAY_S = 1.0

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MattePod: sign in</title>
<style>
  body {{ font-family: system-ui, sans-serif; background: #f6f7f9; color: #1f2937; margin: 0; }}
  main {{ max-width: 360px; margin: 12vh auto; background: #fff; padding: 28px; border-radius: 10px;
          box-shadow: 0 1px 4px rgba(0,0,0,.12); }}
  h1 {{ font-size: 1.3rem; margin: 0 0 4px; }}
  p.note {{ margin: 0 0 18px; color: #6b7280; }}
  label {{ display: block; margin: 12px 0 4px; font-weight: 600; }}
  input {{ width: 100%; box-sizing: border-box; padding: 9px; font-size: 1rem; border: 1px solid #d1d5db;
           border-radius: 6px; }}
  button {{ margin-top: 18px; width: 100%; padding: 10px; font-size: 1rem; border: 0; border-radius: 6px;
            background: #f97316; color: #fff; cursor: pointer; }}
  button:disabled {{ opacity: .6; }}
  #error {{ color: #b91c1c; min-height: 1.3em; margin: 12px 0 0; }}
</style></head>
<body><main>
<h1>MattePod</h1><p class="note">{message}</p>
<form id="login" method="post" action="{action}">
  <label for="username">Username</label>
  <input id="username" name="username" autocomplete="username" required autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password" required>
  <p id="error" role="alert"></p>
  <button id="submit" type="submit">Sign in</button>
</form>
</main>
<script>
const form = document.getElementById("login"), error = document.getElementById("error");
const password = document.getElementById("password"), submit = document.getElementById("submit");
form.addEventListener("submit", async (ev) => {{
  ev.preventDefault();
  submit.disabled = true;
  error.textContent = "";
  try {{
    const r = await fetch(form.action, {{method: "POST", body: new FormData(form), credentials: "same-origin"}});
    if (r.ok) {{ location.reload(); return; }}
    error.textContent = r.status === 400 ? "Wrong username or password." : "Sign-in failed (" + r.status + "): try again.";
  }} catch (e) {{
    error.textContent = "The server did not answer: try again.";
  }}
  password.value = "";  // only the password: the username stays as typed
  password.focus();
  submit.disabled = false;
}});
</script>
</body></html>
"""


class LoginPage:
    """ASGI middleware: our sign-in page at ``GET /`` for browsers without a valid Gradio token, and one
    attempt at a time at ``POST /login`` with a pause after each wrong one."""

    def __init__(self, app, message: str = "Sign in to use this pod."):
        self.app = app
        self.message = message
        self._attempts = asyncio.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        gradio = scope.get("app")
        if getattr(gradio, "auth", None) is None:  # no password set: nothing to sign in to
            return await self.app(scope, receive, send)
        path = _relative_path(scope)
        method = scope.get("method", "GET")
        if path in ("/login", "/login/") and method == "POST":
            return await self._attempt(scope, receive, send)
        if path in ("/", "") and method in ("GET", "HEAD") and not _signed_in(gradio, Request(scope)):
            return await self._page(gradio, scope, receive, send)
        return await self.app(scope, receive, send)

    async def _attempt(self, scope, receive, send):
        status: list[int] = []

        async def watch(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        async with self._attempts:
            await self.app(scope, receive, watch)
            if status and status[0] == 400:
                log.info("wrong username or password at /login")
                await asyncio.sleep(FAIL_DELAY_S)

    async def _page(self, gradio, scope, receive, send):
        from gradio import route_utils

        request = Request(scope)
        root = route_utils.get_root_url(request=request, route_path=_relative_path(scope) or "/",
                                        root_path=getattr(gradio, "root_path", None))
        text = PAGE.format(action=html.escape(root.rstrip("/") + "/login", quote=True),
                           message=html.escape(self.message))
        response = HTMLResponse(text, headers={"Cache-Control": "no-store"})
        await response(scope, receive, send)


def _relative_path(scope) -> str:
    path = scope.get("path", "/")
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


def _signed_in(gradio, request: Request) -> bool:
    """Gradio's own test: a token cookie it issued (``App.tokens``)."""
    cookie_id = getattr(gradio, "cookie_id", "")
    token = (request.cookies.get(f"access-token-{cookie_id}")
             or request.cookies.get(f"access-token-unsecure-{cookie_id}"))
    return bool(token) and gradio.tokens.get(token) is not None
