"""Auth on a public URL: without the password nothing answers; with it the API works and old jobs are listed."""

import json
import urllib.error
import urllib.request

import pytest
from gradio_client import Client, handle_file

from tests.app_harness import RunningApp

import app.gradio_app as ga


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    # a run left by an earlier app process: the new app must list it
    old = root / "output" / "old_20260101-000000"
    old.mkdir(parents=True)
    (old / "metadata.json").write_text(json.dumps({"status": "failed", "outputs": {},
                                                   "error": {"type": "InvalidMediaError", "exit_code": 4,
                                                             "message": "old.mp4 is truncated"}}))
    (root / "output" / "result.txt").write_text("private")
    with RunningApp(root, {"GRADIO_USERNAME": "ana", "GRADIO_PASSWORD": "s3cret-pw",
                           "GRADIO_MAX_FILE_SIZE": "20kb"}) as running:
        yield running


def status_of(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as err:
        return err.code


def test_unauthenticated_requests_fail(app):
    assert status_of(app.url + "config") == 401
    assert status_of(app.url + "gradio_api/info") == 401
    assert status_of(app.url + "gradio_api/file=" + str(app.output / "result.txt")) in (401, 403)
    with pytest.raises(Exception):
        Client(app.url, verbose=False)
    with pytest.raises(Exception):
        Client(app.url, auth=("ana", "wrong"), verbose=False)


def test_password_opens_the_api_and_lists_earlier_jobs(app):
    client = Client(app.url, auth=("ana", "s3cret-pw"), verbose=False)
    jobs = {j["id"]: j for j in client.predict(api_name="/list_jobs")}
    assert jobs["old_20260101-000000"]["status"] == "failed"
    assert "truncated" in jobs["old_20260101-000000"]["error"]["message"]
    assert "NO PASSWORD SET" not in app.log_text()


def test_uploads_above_max_file_size_are_refused(app, tmp_path):
    client = Client(app.url, auth=("ana", "s3cret-pw"), verbose=False)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * 60_000)
    with pytest.raises(Exception, match="(?i)size|large|413"):
        client.predict(video=handle_file(str(big)), input_path="", points="[[1, 1, 1]]", box="", prompt_frame=0,
                       mask=None, options="", api_name="/submit_job")
    assert not (app.input / "uploads" / "big.mp4").exists()


def test_auth_checker_variants():
    assert ga.auth_checker(None, None) is None
    only_pw = ga.auth_checker(None, "pw")  # APP_PASSWORD: any user name, this password
    assert only_pw("anyone", "pw") and not only_pw("anyone", "PW")
    both = ga.auth_checker("ana", "pw")
    assert both("ana", "pw") and not both("bob", "pw") and not both("ana", "")


def test_settings_from_env(monkeypatch):
    for k in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "GRADIO_ROOT_PATH", "GRADIO_PASSWORD", "GRADIO_USERNAME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("APP_PASSWORD", "x")
    s = ga.settings()
    assert (s["server_name"], s["server_port"], s["root_path"], s["password"]) == ("0.0.0.0", 7860, None, "x")
    monkeypatch.setenv("GRADIO_ROOT_PATH", "/matte")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "9000")
    monkeypatch.setenv("GRADIO_MAX_FILE_SIZE", "2gb")
    s = ga.settings()
    assert (s["root_path"], s["server_port"], s["max_file_size"]) == ("/matte", 9000, "2gb")


def test_root_path_from_env(tmp_path):
    """Behind a proxy that serves the app under a sub-path, Gradio builds its URLs with GRADIO_ROOT_PATH."""
    with RunningApp(tmp_path, {"GRADIO_ROOT_PATH": "/matte"}) as running:
        with urllib.request.urlopen(running.url + "config", timeout=10) as resp:
            config = json.loads(resp.read())
    assert config["root"].endswith("/matte")
