"""Signing in, in Debian's headless Chromium: a wrong password keeps the username and says so in one line; the
right one opens the page with Gradio's own token cookie; wrong guesses are taken at most one per second.

Gradio 6.31's own form emptied both fields after a wrong password (app/login.py says why ours is in front).
"""

import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.app_harness import RunningApp
from tests.test_app_browser import ARGS, ARTIFACTS, CHROMIUM, PHONE, shot, text_has

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with RunningApp(tmp_path_factory.mktemp("login"), {"GRADIO_USERNAME": "ana",
                                                       "GRADIO_PASSWORD": "s3cret-pw"}) as running:
        yield running


def post_login(url: str, user: str, pw: str) -> int:
    data = urllib.parse.urlencode({"username": user, "password": pw}).encode()
    try:
        return urllib.request.urlopen(urllib.request.Request(url + "login", data=data), timeout=30).status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_wrong_password_keeps_the_username(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ctx = browser.new_context(viewport=PHONE)
        page = ctx.new_page()
        page.goto(app.url)
        page.fill("#username", "ana")
        page.fill("#password", "not-it")
        page.click("#submit")
        text_has(page, "#error", "Wrong username or password.")
        assert page.input_value("#username") == "ana"  # kept (Gradio's form emptied it)
        assert page.input_value("#password") == ""
        assert page.evaluate("document.activeElement.id") == "password"
        assert not [c for c in ctx.cookies() if c["name"].startswith("access-token")]
        shot(page, "390-login-wrong-password")

        page.fill("#password", "s3cret-pw")  # only the password is typed again
        page.click("#submit")
        page.wait_for_selector("#upload", timeout=60_000)  # Gradio's page, signed in
        names = {c["name"] for c in ctx.cookies()}
        assert any(n.startswith("access-token") for n in names), names  # Gradio's own httponly cookies
        assert all(c["httpOnly"] for c in ctx.cookies() if c["name"].startswith("access-token"))
        page.reload()
        page.wait_for_selector("#upload")  # still signed in: Gradio's page, not ours
        assert page.locator("#username").count() == 0
        shot(page, "390-login-signed-in")
        browser.close()


def test_wrong_guesses_are_slowed_down_and_the_api_is_still_closed(app):
    start = time.monotonic()
    codes = [post_login(app.url, "ana", f"guess{i}") for i in range(3)]
    assert codes == [400, 400, 400]
    assert time.monotonic() - start >= 2.0  # one wrong guess per second at most
    assert post_login(app.url, "ana", "s3cret-pw") == 200
    try:
        urllib.request.urlopen(app.url + "config", timeout=10)
        raise AssertionError("/config answered without a token")
    except urllib.error.HTTPError as err:
        assert err.code == 401
