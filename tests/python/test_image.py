"""The container image, built the way users build it (`scripts/image.sh`: a static binary on an
empty base, `podman build`), then run: running containers may be refused on build machines (no
cgroup delegation), so the image's filesystem is exported (`podman create` + `podman export`)
and its entrypoint run under its own root with `chroot`, as the image's user, with the image's
environment. It must be small, answer from its starter config (the built-in mock), check its
own health without curl, and resolve an upstream by host name with no NSS modules in the image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import REPO_ROOT, MockUpstream

TAG = "localhost/shepherd:test"
MAX_IMAGE_MB = 30


def _podman() -> str:
    engine = shutil.which("podman")
    if not engine:
        pytest.fail("podman is missing: scripts/test installs it (apt-get install podman)", pytrace=False)
    return engine


@pytest.fixture(scope="module")
def image() -> dict:
    """Builds the image; its inspect data."""
    done = subprocess.run([str(REPO_ROOT / "scripts" / "image.sh"), TAG], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"scripts/image.sh failed:\n{done.stdout}\n{done.stderr}"
    inspect = subprocess.run([_podman(), "image", "inspect", TAG], capture_output=True, text=True, check=True)
    return json.loads(inspect.stdout)[0]


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory) -> Path:
    """The image's filesystem, exported and unpacked."""
    root = tmp_path_factory.mktemp("rootfs")
    podman = _podman()
    container = subprocess.run([podman, "create", TAG], capture_output=True, text=True, check=True).stdout.strip()
    try:
        tar = root.parent / "rootfs.tar"
        subprocess.run([podman, "export", "-o", str(tar), container], check=True)
        with tarfile.open(tar) as archive:
            archive.extractall(root, filter="fully_trusted")
        # The image's root is world-readable; the temporary folder it was unpacked into is not.
        root.chmod(0o755)
    finally:
        subprocess.run([podman, "rm", "-f", container], capture_output=True)
    return root


def test_the_image_is_small_non_root_and_checks_its_own_health(image):
    size_mb = image["Size"] / 1e6
    assert size_mb < MAX_IMAGE_MB, f"{size_mb:.1f} MB"
    config = image["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/usr/local/bin/shepherd"]
    assert config["Cmd"] == ["serve"]
    assert "SHEPHERD_CONFIG=/etc/shepherd/shepherd.yaml" in config["Env"]
    health = image.get("Healthcheck") or config.get("Healthcheck")  # podman: top level; docker: Config
    assert health and health["Test"][:3] == ["CMD", "/usr/local/bin/shepherd", "health"], health


def test_the_filesystem_has_no_shell_and_a_static_binary(rootfs):
    files = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if p.is_file())
    assert "usr/local/bin/shepherd" in files, files
    assert "etc/ssl/certs/ca-certificates.crt" in files
    assert not (rootfs / "bin" / "sh").exists()
    assert not any("libc.so" in f or "libnss" in f for f in files), files
    assert (rootfs / "var/lib/shepherd").stat().st_uid == 65532


class Chrooted:
    """The image's entrypoint run under its own root, as its user, with its environment."""

    def __init__(self, rootfs: Path, image: dict, args: list[str], env: dict[str, str] | None = None):
        environment = dict(item.split("=", 1) for item in image["Config"]["Env"])
        environment.update(env or {})
        user = image["Config"]["User"]
        command = ["chroot", f"--userspec={user}", str(rootfs), *image["Config"]["Entrypoint"], *args]
        self.popen = subprocess.Popen(command, env=environment, cwd="/", stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []

    def ready_addr(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "ready":
                return event["addr"]
        pytest.fail("no ready line from the image's binary:\n" + "".join(self.lines[-30:]))

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()


@pytest.fixture
def chrooted(rootfs, image) -> Iterator:
    started: list[Chrooted] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Chrooted:
        proc = Chrooted(rootfs, image, args, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_the_starter_config_answers_and_the_healthcheck_passes(chrooted, rootfs, image):
    if os.geteuid() != 0:
        pytest.fail("chroot needs root (the suite runs as root in CI)", pytrace=False)
    # The starter config listens on $SHEPHERD_LISTEN, default 0.0.0.0:8080: a free port here.
    gateway = chrooted(["serve"], {"SHEPHERD_DEMO_KEY": "sk-image-test-0123456789",
                                   "SHEPHERD_LISTEN": "127.0.0.1:0"})
    addr = gateway.ready_addr()
    base = f"http://{addr}"
    answer = httpx.post(f"{base}/v1/chat/completions", timeout=10,
                        headers={"authorization": "Bearer sk-image-test-0123456789"},
                        json={"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=10,
                      headers={"authorization": "Bearer sk-image-test-0123456789"},
                      json={"model": "mock-gpt", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as stream:
        body = "".join(stream.iter_text())
    assert body.rstrip().endswith("data: [DONE]"), body[-200:]
    health = subprocess.run(["chroot", f"--userspec={image['Config']['User']}", str(rootfs),
                             "/usr/local/bin/shepherd", "health", f"{base}/readyz"],
                            capture_output=True, text=True, timeout=20)
    assert health.returncode == 0, health.stderr
    # SQLite in the image's data folder, written as the image's user.
    assert (rootfs / "var/lib/shepherd/shepherd.db").stat().st_uid == 65532


def test_an_upstream_is_reached_by_host_name_without_nss(chrooted, rootfs, mock_upstream: MockUpstream):
    """glibc's built-in resolver reads the container's /etc/hosts (a runtime writes it; here
    the test does) with no NSS module in the image."""
    if os.geteuid() != 0:
        pytest.fail("chroot needs root (the suite runs as root in CI)", pytrace=False)
    etc = rootfs / "etc"
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.0.1 upstream.shepherd.internal\n")
    port = mock_upstream.addr.rsplit(":", 1)[1]
    config = etc / "by-name.yaml"
    config.write_text(
        "server: {listen: 127.0.0.1:0}\n"
        "state: {database: 'sqlite::memory:'}\n"
        f"providers: {{up: {{kind: openai, base_url: 'http://upstream.shepherd.internal:{port}/v1', api_keys: [sk-upstream]}}}}\n"
        "models: {m: {deployments: [{provider: up, model: mock-gpt-1}]}}\n"
        "keys: [{name: t, key: sk-by-name-0123456789}]\n")
    gateway = chrooted(["serve", "--config", "/etc/by-name.yaml"])
    addr = gateway.ready_addr()
    answer = httpx.post(f"http://{addr}/v1/chat/completions", timeout=10,
                        headers={"authorization": "Bearer sk-by-name-0123456789"},
                        json={"model": "m", "messages": [{"role": "user", "content": "by name"}]})
    assert answer.status_code == 200, answer.text
    seen = mock_upstream.requests()
    assert any(r["path"].endswith("/chat/completions") for r in seen), seen

