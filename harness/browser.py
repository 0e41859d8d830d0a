"""Headless Chromium driven over the Chrome DevTools Protocol (a websocket; the ``websockets`` package).

``Browser()`` starts Debian's ``chromium`` headless with its own profile and a free debugging
port; ``open(url)`` loads a page and waits for its load event; ``eval(js)`` returns a value of the
page; ``wait(js, timeout_s)`` polls an expression until it is truthy; ``console_errors()`` lists
the page's console errors, uncaught exceptions and failed loads; ``screenshot(path)`` writes a PNG
of the whole page; ``close()`` ends the browser. ``chromium_path()`` is None where it is absent.
Used by the watch's tests (``tests/test_watch.py``) and ``benchmarks/watch_latency.py``.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Browser", "BrowserError", "chromium_path"]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-component-update",
    "--disable-dev-shm-usage",
    "--mute-audio",
)


class BrowserError(RuntimeError):
    """The browser did not start, or did not answer."""


def chromium_path() -> str | None:
    """Debian's ``chromium`` (or ``chromium-browser``) if installed, else None."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class Browser:
    """One headless Chromium with one page, driven over its DevTools websocket."""

    def __init__(self, *, width: int = 1300, height: int = 1000, start_timeout_s: float = 30.0) -> None:
        from websockets.sync.client import connect

        binary = chromium_path()
        if binary is None:
            raise BrowserError("no chromium binary (Debian package `chromium`)")
        self.profile = Path(tempfile.mkdtemp(prefix="gainloop-chromium-"))
        self.log_path = self.profile / "chromium.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    *FLAGS,
                    f"--user-data-dir={self.profile}",
                    "--remote-debugging-port=0",
                    f"--window-size={width},{height}",
                    "about:blank",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        self.ws = None
        try:
            port = self._port(start_timeout_s)
            url = self._page_ws(port, start_timeout_s)
            self.ws = connect(url, max_size=64 * 2**20, open_timeout=10).__enter__()  # closed in close()
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _port(self, timeout_s: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            if marker.exists():
                text = marker.read_text().split()
                if text:
                    return int(text[0])
            time.sleep(0.05)
        raise BrowserError(f"chromium did not open its debugging port within {timeout_s:g} s")

    @staticmethod
    def _page_ws(port: int, timeout_s: float) -> str:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2.0, trust_env=False).json()
            except (httpx.HTTPError, ValueError):
                targets = []
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.05)
        raise BrowserError("chromium has no page target")

    # ------------------------------------------------------------------ the protocol
    def call(self, method: str, timeout_s: float = 30.0, **params) -> dict:
        """Send one command; return its result (events that arrive meanwhile are kept in ``events``)."""
        n = next(self._ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {method} within {timeout_s:g} s")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == n:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def open(self, url: str, timeout_s: float = 30.0) -> None:
        """Load ``url`` and wait for its load event."""
        seen = len(self.events)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while not any(e["method"] == "Page.loadEventFired" for e in self.events[seen:]):
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not load within {timeout_s:g} s")
            self.eval("1")  # pumps the events

    def eval(self, expression: str, timeout_s: float = 30.0):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", timeout_s=timeout_s, expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]!r} raised: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait(self, expression: str, timeout_s: float = 30.0, poll_s: float = 0.05):
        """The first truthy value of ``expression``, polled every ``poll_s``; ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} was not true within {timeout_s:g} s (last: {value!r})")
            time.sleep(poll_s)

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads the page reported so far."""
        self.eval("1")
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"{d.get('text')}: {d.get('exception', {}).get('description', '')}")
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return out

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (beyond the window) at ``path``."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics.get("contentSize")
        shot = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
