"""`workbench teach`: a real server on a loopback port, a video as the camera, its API, a browser.

The camera is a video file the tests write, played as a live source (`Paced`: one frame every
1/fps seconds whether or not it is used). Examples are posted as the images of class folders.
After Save, the saved folder and model are checked against `workbench imprint` and
`workbench evaluate` on that folder.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.builders import FLOWERS, assert_ok, class_image, invoke, make_dataset, shared_file
from workbench.data.frames import FolderSource, Paced, open_source
from workbench.run.teach import TeachSession
from workbench.run.teach_server import MAX_BODY, TeachServer

try:
    import cv2
except ImportError:
    pytest.skip("OpenCV is not installed: pip install 'workbench[camera]'", allow_module_level=True)

STYLES = ("red", "green", "blue")


def colour_video(path: Path, style: str, frames: int = 400) -> Path:
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (96, 96))
    for _ in range(frames):
        writer.write(cv2.cvtColor(np.asarray(class_image(style, rng, size=96)), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class Client:
    """The API over HTTP, as the page and scripts use it."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base, self.token = base, token

    def call(
        self, method: str, path: str, body: bytes | None = None, json_body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        data = json.dumps(json_body).encode() if json_body is not None else body
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("X-Workbench-Token", self.token)
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                raw, status, kind = response.read(), response.status, response.headers
        except urllib.error.HTTPError as e:
            raw, status, kind = e.read(), e.code, e.headers
        if "json" in (kind.get("Content-Type") or ""):
            return status, json.loads(raw)
        return status, raw

    def state(self) -> dict[str, Any]:
        status, state = self.call("GET", "/api/state")
        assert status == 200, state
        return state


def serve(session: TeachSession, host: str = "127.0.0.1") -> tuple[TeachServer, Iterator[None]]:
    server = TeachServer(session, host, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def teaching(tmp_path: Path, models: dict[str, Path]) -> Iterator[tuple[TeachServer, Client]]:
    """A session on the tiny extractor whose camera shows green, served on loopback."""
    video = colour_video(tmp_path / "camera.avi", "green")
    session = TeachSession(Paced(open_source(video), 40), tmp_path / "taught", models["uint8"],
                           output=tmp_path / "taught.tflite")  # fmt: skip
    server, _ = serve(session)
    try:
        yield server, Client(f"http://127.0.0.1:{server.port}", server.token)
    finally:
        server.shutdown()
        server.server_close()
        session.close()


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_teach_classes_predict_live_save_and_match_imprint(
    tmp_path: Path, models: dict[str, Path], teaching: tuple[TeachServer, Client]
) -> None:
    _, client = teaching
    photos = make_dataset(tmp_path / "photos", classes=STYLES, per_class=8)
    for style in STYLES:
        assert client.call("POST", "/api/classes", json_body={"name": style})[0] == 201
        for image in sorted((photos / style).iterdir()):
            status, added = client.call(
                "POST", f"/api/classes/{style}/examples", image.read_bytes()
            )
            assert status == 201, added
    state = client.state()
    assert [(c["name"], c["examples"], c["unsaved"]) for c in state["classes"]] == [
        (style, 8, 8) for style in STYLES
    ]
    # the camera shows green: the prediction follows the classes taught, without retraining
    wait_for(lambda: client.state()["prediction"] == "green")
    assert client.state()["scores"]["green"] > 0.5
    status, frame = client.call("GET", "/frame.jpg")
    assert status == 200 and frame[:2] == b"\xff\xd8"
    # the current frame as an example, then gone again
    status, added = client.call("POST", "/api/classes/green/examples")
    assert status == 201 and added["examples"] == 9
    assert client.call("DELETE", "/api/classes/green/examples/8")[0] == 200
    status, thumbnail = client.call("GET", "/api/classes/red/examples/0.jpg")
    assert status == 200 and thumbnail[:2] == b"\xff\xd8"

    status, saved = client.call("POST", "/api/save")
    assert status == 200, saved
    taught = tmp_path / "taught"
    assert sorted(p.name for p in taught.iterdir()) == sorted(STYLES)
    assert len(saved["written"]) == 24 and saved["held_out_images"] == 6
    assert all(c["unsaved"] == 0 for c in client.state()["classes"])
    model = Path(saved["model"])
    # workbench imprint on the saved folder gives the same head: the same scores
    again = tmp_path / "again.tflite"
    assert_ok(invoke("imprint", taught, "-e", models["uint8"], "-o", again, "--json"))
    scored = [json.loads(invoke("classify", m, taught, "-k", "3", "--json").stdout)["results"]
              for m in (model, again)]  # fmt: skip
    assert scored[0] == scored[1]
    evaluated = invoke("evaluate", model, taught, "--json")
    assert_ok(evaluated)
    assert json.loads(evaluated.stdout)["top_k_accuracy"][0] == saved["top1"] == 1.0
    # a second save writes only what is new, numbered on, never over a file
    client.call("POST", "/api/classes/red/examples", (photos / "red" / "red_000.png").read_bytes())
    status, more = client.call("POST", "/api/save")
    assert status == 200 and [Path(p).name for p in more["written"]] == ["capture_0009.jpg"]


@pytest.mark.parametrize(
    ("name", "status"),
    [("../x", 400), ("a/b", 400), (".hidden", 400), ("", 400), (" padded", 400), ("ok", 201)],
)
def test_class_names_follow_the_folder_rules(
    teaching: tuple[TeachServer, Client], name: str, status: int
) -> None:
    _, client = teaching
    assert client.call("POST", "/api/classes", json_body={"name": name})[0] == status


def test_bad_requests_get_an_error_and_the_server_goes_on(
    teaching: tuple[TeachServer, Client],
) -> None:
    server, client = teaching
    assert client.call("POST", "/api/classes", b"{not json")[0] == 400
    assert client.call("POST", "/api/classes", json_body=["name"])[0] == 400
    assert client.call("POST", "/api/classes/none/examples", b"jpeg?")[0] == 404
    client.call("POST", "/api/classes", json_body={"name": "cat"})
    assert client.call("POST", "/api/classes/cat/examples", b"not an image")[0] == 400
    assert client.call("DELETE", "/api/classes/cat/examples/7")[0] == 404
    assert client.call("GET", "/api/nothing")[0] == 404
    assert client.call("POST", "/api/save")[0] == 400  # one class, no examples
    # 50 MB announced: refused before it is read (the answer comes after the first megabyte)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        raw.sendall(
            f"POST /api/classes/cat/examples HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-Workbench-Token: {server.token}\r\nContent-Length: {50 << 20}\r\n\r\n".encode()
            + b"x" * (1 << 20)
        )
        answer = raw.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413") and f"{MAX_BODY >> 20} MiB" in answer
    # a request that is not HTTP at all
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        raw.recv(1024)
    assert client.state()["classes"] == [{"name": "cat", "examples": 0, "unsaved": 0}]


def test_the_token_is_required_and_foreign_hosts_refused(
    tmp_path: Path, models: dict[str, Path], teaching: tuple[TeachServer, Client]
) -> None:
    server, client = teaching
    anonymous = Client(client.base, None)
    assert anonymous.call("GET", "/api/state")[0] == 403
    assert anonymous.call("POST", "/api/classes", json_body={"name": "x"})[0] == 403
    assert Client(client.base, "wrong").call("GET", "/api/state")[0] == 403
    status, page = anonymous.call("GET", "/")  # on loopback the page itself is open
    assert status == 200 and server.token.encode() in page
    assert client.call("GET", "/api/state", headers={"Host": "evil.example:80"})[0] == 403
    # on another address everything, the page included, needs the token in the URL
    frames = FolderSource(make_dataset(tmp_path / "f", per_class=2) / "red")
    session = TeachSession(frames, tmp_path / "out", models["uint8"], output=tmp_path / "o.tflite")
    other, _ = serve(session, host="127.0.0.2")
    try:
        base = f"http://127.0.0.2:{other.port}"
        assert other.url() == f"{base}/?token={other.token}"
        assert Client(base, None).call("GET", "/")[0] == 403
        assert Client(base, None).call("GET", f"/?token={other.token}")[0] == 200
        assert Client(base, other.token).call("GET", "/api/state")[0] == 200
    finally:
        other.shutdown()
        other.server_close()
        session.close()


def test_the_command_serves_and_stops_on_ctrl_c_naming_unsaved_examples(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    video = colour_video(tmp_path / "camera.avi", "blue", frames=100)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "teach", "--source", video, "--fps", "20",
         "-e", models["uint8"], "--data", tmp_path / "taught", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("workbench teach: open http://127.0.0.1:"), line
        base = line.split("open ", 1)[1].strip()
        page = urllib.request.urlopen(base + "/", timeout=30).read().decode()
        token = page.split('get("token") || "', 1)[1].split('"', 1)[0]
        client = Client(base, token)
        client.call("POST", "/api/classes", json_body={"name": "blue"})
        wait_for(lambda: client.state()["frame"] >= 0)
        assert client.call("POST", "/api/classes/blue/examples")[0] == 201
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "warning: 1 examples were not saved" in stderr and "Traceback" not in stderr


@pytest.mark.shared
def test_flower_classes_taught_save_a_model_as_good_as_imprint(
    tmp_path: Path, teaching: tuple[TeachServer, Client]
) -> None:
    """3 flower classes, 10 examples each, posted through the API: the saved model's held-out
    top-1 is that of `workbench imprint` on the same images (it is that command's model)."""
    shared_file(FLOWERS)
    _, client = teaching
    for name in ("daisy", "dandelion", "roses"):
        client.call("POST", "/api/classes", json_body={"name": name})
        for photo in sorted((FLOWERS / name).glob("*.jpg"))[:10]:
            client.call("POST", f"/api/classes/{name}/examples", photo.read_bytes())
    status, saved = client.call("POST", "/api/save")
    assert status == 200, saved
    direct = invoke("imprint", tmp_path / "taught", "-e", teaching[0].session.extractor,
                    "-o", tmp_path / "direct.tflite", "--json")  # fmt: skip
    assert_ok(direct)
    assert abs(json.loads(direct.stdout)["top_k_accuracy"][0] - saved["top1"]) <= 0.02


needs_browser = pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
)


@needs_browser
def test_a_browser_adds_a_class_and_records_examples(
    tmp_path: Path, teaching: tuple[TeachServer, Client]
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    server, client = teaching
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                     f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"http://127.0.0.1:{server.port}/")
        driver.find_element(By.ID, "newclass").send_keys("green thing")
        driver.find_element(By.CSS_SELECTOR, "#add button").click()
        wait_for(lambda: client.state()["classes"])
        record = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "button.record"))[0]
        wait_for(lambda: client.state()["frame"] >= 0)
        ActionChains(driver).click_and_hold(record).pause(1.0).release().perform()
        counted = wait_for(lambda: client.state()["classes"][0]["examples"] >= 3)
        assert counted
        wait_for(lambda: "examples" in driver.find_element(By.CSS_SELECTOR, ".card").text)
        wait_for(lambda: driver.find_element(By.ID, "prediction").text == "green thing")
        wait_for(lambda: driver.execute_script(
            "return document.getElementById('stream').naturalWidth") > 0)  # fmt: skip
        shot = tmp_path / "teach.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        assert driver.find_element(By.CSS_SELECTOR, ".card h2 span").text == "green thing"
    finally:
        driver.quit()
