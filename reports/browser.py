"""Open a report in headless Chromium over the DevTools protocol (stdlib only) and check it like a reader would.

Chromium speaks the protocol over a pipe when started with ``--remote-debugging-pipe``: it reads
NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4, so no websocket
client package is needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from reports.errors import ReportError

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--hide-scrollbars", "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Pipe:
    """A minimal DevTools client over Chromium's debugging pipe."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int):
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.next_id = 0
        self.buffer = b""
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send a command and wait for its reply, keeping every event that arrives meanwhile."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until an event named ``method`` has arrived (or had already)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read_message(deadline))

    def drain(self, seconds: float) -> None:
        """Collect events for a short while (late console messages, lazy requests)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass


_PROBE = """JSON.stringify({
  title: document.title,
  text: document.body ? document.body.innerText.length : 0,
  height: Math.ceil(document.documentElement.scrollHeight),
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                                                 scheme: i.src.split(':')[0]})),
  scripts: document.scripts.length,
})"""


def _above_four(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def check_report(html: str | Path, screenshot: str | Path | None = None, width: int = 1400, max_height: int = 12000, timeout: float = 60.0) -> dict[str, Any]:
    """Open ``html`` from file:// in headless Chromium; return images, console errors, outside requests (and save a screenshot)."""
    exe = find_chromium()
    if exe is None:
        raise ReportError("Chromium is not installed: apt-get install -y chromium (Debian) so reports can be checked in a browser")
    url = Path(html).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="slimlens-chromium-")
    # Above fd 4, so the redirections below never overwrite or close a pipe end that already sits at
    # 3 or 4 (a fresh interpreter hands out exactly those).
    to_child_r, to_child_w, from_child_r, from_child_w = (_above_four(fd) for fd in (*os.pipe(), *os.pipe()))
    # Chromium expects the command pipe on fd 3 and the reply pipe on fd 4. bash moves them there, so no
    # preexec_fn runs in a forked copy of a multi-threaded (torch) process.
    wiring = f'exec "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
    command = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"]
    proc = subprocess.Popen(["bash", "-c", wiring, "chromium", *command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, pass_fds=(to_child_r, from_child_w))
    os.close(to_child_r)
    os.close(from_child_w)
    pipe = _Pipe(proc, to_child_w, from_child_r)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.send("Page.navigate", {"url": url}, session=session, timeout=timeout)
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        pipe.drain(0.5)
        probe = json.loads(pipe.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=session)["result"]["value"])
        shot = None
        if screenshot is not None:
            height = min(max(int(probe["height"]), 600), max_height)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.drain(0.3)
            data = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=timeout)["data"]
            shot = Path(screenshot)
            shot.write_bytes(base64.b64decode(data))
        console_errors = []
        requests = []
        for event in pipe.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                console_errors.append(params.get("exceptionDetails", {}).get("text", "exception"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                console_errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                requests.append(params.get("request", {}).get("url", ""))
        outside = [u for u in requests if not (u.startswith("file://") or u.startswith("data:"))]
        return {"url": url, **probe, "console_errors": console_errors, "requests": requests, "outside_requests": outside,
                "screenshot": str(shot) if shot else None}
    finally:
        try:
            pipe.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_child_w)
        os.close(from_child_r)
        shutil.rmtree(profile, ignore_errors=True)
