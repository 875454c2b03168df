"""mattepod.download against the FAKE hub (tests/fake_hf_hub.py): verify, skip, repair, retry, fail loudly."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fake_hf_hub import FakeHub, FakeRepo, closed_endpoint

from mattepod.download import RECORD_NAME, Settings, ensure_model, read_record
from mattepod.errors import WeightsError
from mattepod.weights import Model, WeightFile

BIG = os.urandom(200_000)  # an "LFS" checkpoint
CFG = b'{"hidden": 8}\n'  # a small git-stored file: its etag is the git blob sha1


@pytest.fixture
def hub():
    with FakeHub({"org/net": FakeRepo({"net.safetensors": BIG, "config.json": CFG})}) as h:
        yield h


def model(sha: str | None = None) -> Model:
    return Model("net", "org/net", (WeightFile("config.json"), WeightFile("net.safetensors", sha)), kind="matanyone")


def settings(tmp_path: Path, hub: FakeHub | None, **kw) -> Settings:
    endpoint = hub.endpoint if hub else kw.pop("endpoint")
    return Settings(weights_dir=tmp_path / "weights", endpoint=endpoint, retries=kw.pop("retries", 2),
                    backoff=kw.pop("backoff", 0.01), **kw)


def hand_copied(s) -> "Path":
    """Both files of the test model copied into the weights folder by hand (no download)."""
    folder = s.weights_dir / "net"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(CFG)
    (folder / "net.safetensors").write_bytes(BIG)
    return folder


def test_first_run_downloads_and_verifies_second_run_makes_no_request(tmp_path, hub):
    s = settings(tmp_path, hub)
    first = ensure_model(model(), s, log=lambda m: None)
    assert [r.status for r in first] == ["downloaded", "downloaded"]
    folder = s.weights_dir / "net"
    assert (folder / "net.safetensors").read_bytes() == BIG and (folder / "config.json").read_bytes() == CFG
    rec = read_record(folder)["files"]
    assert rec["net.safetensors"]["sha256"] == hashlib.sha256(BIG).hexdigest()
    assert rec["net.safetensors"]["verified_by"] == "hub-lfs-sha256"
    assert rec["config.json"]["verified_by"] == "hub-git-blob-sha1"
    assert hub.count("/cdn/", "GET") == 1  # the LFS bytes came from the "CDN" the hub redirected to
    before = len(hub.requests)
    second = ensure_model(model(), s, log=lambda m: None)
    assert [r.status for r in second] == ["verified", "verified"]
    assert len(hub.requests) == before


def test_same_size_corruption_is_found_and_replaced(tmp_path, hub):
    s = settings(tmp_path, hub)
    ensure_model(model(), s, log=lambda m: None)
    path = s.weights_dir / "net" / "net.safetensors"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x55
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size, same mtime
    assert [r.status for r in ensure_model(model(), s, log=lambda m: None)] == ["verified", "verified"]
    s.verify = "full"  # MATTEPOD_VERIFY=full hashes every file
    logs: list[str] = []
    results = ensure_model(model(), s, log=logs.append)
    assert [r.status for r in results] == ["verified", "downloaded"]
    assert path.read_bytes() == BIG
    assert any("corrupt" in line for line in logs)


def test_partial_file_is_fetched_again(tmp_path, hub):
    s = settings(tmp_path, hub)
    ensure_model(model(), s, log=lambda m: None)
    path = s.weights_dir / "net" / "net.safetensors"
    path.write_bytes(BIG[:5000])
    results = ensure_model(model(), s, log=lambda m: None)
    assert results[1].status == "downloaded" and path.read_bytes() == BIG


def test_flaky_hub_is_retried_with_backoff(tmp_path, hub):
    hub.fail_next = 2
    logs: list[str] = []
    results = ensure_model(model(), settings(tmp_path, hub, retries=3), log=logs.append)
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert sum("retry" in line for line in logs) == 2


def test_download_that_never_verifies_fails_loudly_and_leaves_nothing(tmp_path, hub):
    hub.corrupt_next = 100
    s = settings(tmp_path, hub, retries=1)
    with pytest.raises(WeightsError, match="config.json.*after 2 tries.*checksum") as info:
        ensure_model(model(), s, log=lambda m: None)
    assert info.value.exit_code == 6
    assert not (s.weights_dir / "net" / "config.json").exists()


def test_manifest_pin_is_checked_against_the_hub(tmp_path, hub):
    good = hashlib.sha256(BIG).hexdigest()
    s = settings(tmp_path, hub)
    results = ensure_model(model(good), s, log=lambda m: None)
    assert read_record(s.weights_dir / "net")["files"]["net.safetensors"]["verified_by"] == "manifest-sha256"
    assert results[1].sha256 == good
    with pytest.raises(WeightsError, match="differs from the manifest pin"):
        ensure_model(model("0" * 64), settings(tmp_path / "other", hub), log=lambda m: None)


def test_token_goes_to_the_hub_but_not_to_the_cdn(tmp_path, hub):
    hub.token = "hf_test_token"
    with pytest.raises(WeightsError, match="HF_TOKEN"):
        ensure_model(model(), settings(tmp_path / "a", hub), log=lambda m: None)
    ensure_model(model(), settings(tmp_path / "b", hub, token="hf_test_token"), log=lambda m: None)
    resolve = [r for r in hub.requests if "/resolve/" in r.path and r.authorization]
    cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert resolve and all(r.authorization == "Bearer hf_test_token" for r in resolve)
    assert cdn and all(r.authorization is None for r in cdn)


def test_offline_uses_verified_files_and_refuses_missing_ones(tmp_path, hub):
    s = settings(tmp_path, hub)
    ensure_model(model(), s, log=lambda m: None)
    before = len(hub.requests)
    s.offline = True
    assert [r.status for r in ensure_model(model(), s, log=lambda m: None)] == ["verified", "verified"]
    (s.weights_dir / "net" / "config.json").unlink()
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        ensure_model(model(), s, log=lambda m: None)
    assert len(hub.requests) == before


def test_unreachable_hub_without_weights_fails_with_the_path_to_fill(tmp_path):
    s = settings(tmp_path, None, endpoint=closed_endpoint(), retries=1)
    with pytest.raises(WeightsError, match=r"cannot download org/net/config.json .* after 2 tries") as info:
        ensure_model(model(), s, log=lambda m: None)
    assert "copy the file to" in str(info.value)


def test_unreachable_hub_keeps_present_unverified_files_with_a_warning(tmp_path):
    s = settings(tmp_path, None, endpoint=closed_endpoint())
    folder = hand_copied(s)
    logs: list[str] = []
    results = ensure_model(model(), s, log=logs.append)
    assert [r.status for r in results] == ["unverified", "unverified"]
    assert any("WARNING hub unreachable" in line for line in logs)
    assert not (folder / RECORD_NAME).exists() or not read_record(folder).get("files")


def test_settings_from_env(tmp_path):
    s = Settings.from_env(env={"MODEL_CACHE_DIR": str(tmp_path), "HF_ENDPOINT": "http://x:1/", "HF_TOKEN": "t",
                               "HF_HUB_OFFLINE": "1", "MATTEPOD_DOWNLOAD_RETRIES": "7",
                               "MATTEPOD_VERIFY": "full"})
    assert (s.weights_dir, s.endpoint, s.token, s.offline, s.retries, s.verify) == (
        tmp_path, "http://x:1", "t", True, 7, "full")
    with pytest.raises(WeightsError, match="MATTEPOD_DOWNLOAD_RETRIES='x' is not a number"):
        Settings.from_env(env={"MATTEPOD_DOWNLOAD_RETRIES": "x"})
    with pytest.raises(WeightsError, match="MATTEPOD_VERIFY"):
        Settings.from_env(env={"MATTEPOD_VERIFY": "sometimes"})


def test_hand_copied_files_with_manifest_pins_need_no_network_and_are_stamped(tmp_path):
    s = settings(tmp_path, None, endpoint=closed_endpoint())
    folder = hand_copied(s)
    pinned = Model("net", "org/net", (WeightFile("config.json", hashlib.sha256(CFG).hexdigest()),
                                      WeightFile("net.safetensors", hashlib.sha256(BIG).hexdigest(), len(BIG))))
    assert [r.status for r in ensure_model(pinned, s, log=lambda m: None)] == ["verified", "verified"]
    files = read_record(folder)["files"]
    assert files["net.safetensors"]["mtime_ns"] == (folder / "net.safetensors").stat().st_mtime_ns
    (folder / "net.safetensors").write_bytes(BIG[:-1] + b"\0")
    with pytest.raises(WeightsError, match="cannot download"):  # corrupt, and the hub is unreachable
        ensure_model(pinned, s, log=lambda m: None)


def test_a_refetch_stays_on_the_commit_the_other_files_came_from(tmp_path, hub):
    s = settings(tmp_path, hub)
    ensure_model(model(), s, log=lambda m: None)
    first_commit = hub.repos["org/net"].commit
    (s.weights_dir / "net" / "net.safetensors").unlink()
    hub.requests.clear()
    ensure_model(model(), s, log=lambda m: None)
    assert hub.requests[0].path == f"/org/net/resolve/{first_commit}/net.safetensors"
    # the branch moved and the old commit is gone: fall back to the manifest's revision, say so
    hub.repos["org/net"].commit = "f" * 40
    (s.weights_dir / "net" / "net.safetensors").unlink()
    logs: list[str] = []
    assert ensure_model(model(), s, log=logs.append)[1].status == "downloaded"
    assert any("is gone from the hub" in line for line in logs)


@pytest.mark.filterwarnings("ignore:flock not supported:UserWarning")  # huggingface_hub falls back too
def test_lock_folder_fallback_when_the_volume_has_no_flock(tmp_path, hub, monkeypatch):
    import errno

    from mattepod import download

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")  # what filelock (in huggingface_hub) also handles

    monkeypatch.setattr(download.fcntl, "flock", no_flock)
    s = settings(tmp_path, hub, lock_timeout=0.5)
    logs: list[str] = []
    assert [r.status for r in ensure_model(model(), s, log=logs.append)] == ["downloaded", "downloaded"]
    assert any("using a lock folder" in line for line in logs)
    held = s.weights_dir / ".locks" / "net.lock.d"
    assert not held.exists()
    (s.weights_dir / "net" / "config.json").unlink()
    held.mkdir()  # another container holds it: wait; once older than MATTEPOD_LOCK_TIMEOUT it counts as dead
    logs.clear()
    assert ensure_model(model(), s, log=logs.append)[0].status == "downloaded"
    assert any("another process is fetching it" in line for line in logs)
    assert any("stale lock" in line for line in logs)
    assert not held.exists()


def test_disk_full_during_download_is_a_disk_full_error(tmp_path, hub, monkeypatch):
    import errno

    import huggingface_hub

    from mattepod.errors import DiskFullError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", full)
    with pytest.raises(DiskFullError, match="ran out of space") as info:
        ensure_model(model(), settings(tmp_path, hub), log=lambda m: None)
    assert info.value.exit_code == 8
