"""Open every page of the built site in headless Chromium and fail on anything broken.

``make docs-check`` runs it after ``make docs``::

    python docs/scripts/check_site.py site --screenshot docs-check/home.png

It serves the site with ``python -m http.server`` on 127.0.0.1 and drives Chromium over
the DevTools protocol through a pipe (``--remote-debugging-pipe``: no driver, no
websocket package; the standard library only). A page fails when, while it loads:

* the console reports an error, or a script throws;
* a request fails, answers 4xx/5xx, or leaves the loopback server (the site must work
  offline: no fonts, scripts or images from elsewhere);
* an image does not render (not loaded, or zero width);
* it has no title heading or no text; an API reference page (``api/``) renders no
  documented object, or shows an unprocessed ``:::`` directive.

The home page's screenshot is saved for a human look.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pathlib
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

#: what the page reports about itself, evaluated after it loads
PAGE_FACTS = """JSON.stringify({
  heading: (document.querySelector("article h1") || {textContent: ""}).textContent.trim(),
  text: (document.querySelector("article") || {innerText: ""}).innerText,
  images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
  apiObjects: document.querySelectorAll("article .doc.doc-object").length,
})"""
#: how long a page may stay quiet after its load event before it is judged (the search
#: worker fetches its index after load)
SETTLE_S = 0.6
LOAD_TIMEOUT_S = 30.0


def site_pages(site: pathlib.Path) -> List[str]:
    """Every page of the built site as a URL path (``""``, ``"guides/torch/"``, ...).

    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for name in ("index.html", "api/torch/index.html", "404.html", "assets/x/index.html"):
    ...         (pathlib.Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
    ...         _ = (pathlib.Path(folder) / name).write_text("")
    ...     site_pages(pathlib.Path(folder))
    ['', 'api/torch/']
    """
    pages = []
    for path in sorted(site.rglob("index.html")):
        relative = path.parent.relative_to(site).as_posix()
        if not relative.startswith("assets"):
            pages.append("" if relative == "." else relative + "/")
    return sorted(pages)


def page_problems(page: str, events: List[Dict[str, Any]], facts: Dict[str, Any], origin: str) -> List[str]:
    """What is wrong with one loaded page, from the DevTools events and its facts.

    >>> facts = {"heading": "Home", "text": "hello world " * 10, "images": [], "apiObjects": 0}
    >>> page_problems("", [], facts, "http://127.0.0.1:1")
    []
    >>> page_problems("api/x/", [{"method": "Runtime.exceptionThrown",
    ...     "params": {"exceptionDetails": {"text": "Uncaught", "exception": {"description": "boom"}}}}],
    ...     facts, "http://127.0.0.1:1")
    ['script error: Uncaught boom', 'API reference renders no documented object']
    """
    problems = []
    for event in events:
        problems += _event_problems(event, origin)
    if not facts["heading"]:
        problems.append("no <h1> heading")
    if len(facts["text"].strip()) < 40:
        problems.append(f"almost no text ({len(facts['text'].strip())} characters)")
    problems += [f"image does not render: {image['src']}" for image in facts["images"] if not image["ok"]]
    if page.startswith("api/"):
        if facts["apiObjects"] == 0:
            problems.append("API reference renders no documented object")
        if ":::" in facts["text"]:
            problems.append("an unprocessed ::: directive is shown")
    return problems


def _event_problems(event: Dict[str, Any], origin: str) -> List[str]:
    method, params = event["method"], event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return [f"script error: {details.get('text', '')} {details.get('exception', {}).get('description', '')}".strip()]
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        return [f"console.{params['type']}: {text}"]
    if method == "Log.entryAdded" and params["entry"].get("level") == "error":
        entry = params["entry"]
        return [f"console error: {entry.get('text', '')} {entry.get('url', '')}".strip()]
    if method == "Network.requestWillBeSent":
        url = params["request"]["url"]
        if not url.startswith((origin, "data:", "blob:", "about:")):
            return [f"request leaves the local server: {url}"]
    if method == "Network.responseReceived" and params["response"]["status"] >= 400:
        return [f"HTTP {params['response']['status']}: {params['response']['url']}"]
    if method == "Network.loadingFailed" and not params.get("canceled"):
        return [f"request failed: {params.get('errorText', '')}"]
    return []


# ---------------------------------------------------------------- the browser


class DevTools:
    """The DevTools protocol over Chromium's ``--remote-debugging-pipe`` (fd 3 in, fd 4 out;
    messages are JSON texts ended by a NUL byte)."""

    def __init__(self, chromium: str, profile: str):
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()
        flags = ["--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
                 "--no-default-browser-check", "--disable-gpu", "--disable-extensions", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                 "--window-size=1280,900", "about:blank"]  # fmt: skip
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        # the shell puts our pipe ends on the descriptors Chromium reads and writes
        command = ["sh", "-c", f'exec "$@" 3<&{to_browser} 4>&{from_browser}', "sh", chromium, *flags]
        self.process = subprocess.Popen(command, pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self._messages: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
        self._next_id = 0
        self.events: List[Dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as stream:
            while chunk := stream.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)  # the browser went away

    def _next_message(self, deadline: float) -> Optional[Dict[str, Any]]:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if message is None:
            raise RuntimeError(f"Chromium exited (code {self.process.poll()})")
        return message

    def send(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None) -> Dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message: Dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            reply = self._next_message(deadline)
            if reply is None:
                break
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"no answer to {method} within {LOAD_TIMEOUT_S} s")

    def wait_for(self, done: Callable[[Dict[str, Any]], bool], timeout: float) -> bool:
        """Collect events until one satisfies ``done`` (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        for event in self.events:
            if done(event):
                return True
        while time.monotonic() < deadline:
            event = self._next_message(deadline)
            if event is None:
                return False
            self.events.append(event)
            if done(event):
                return True
        return False

    def settle(self, quiet: float, limit: float) -> None:
        """Collect events until none arrives for ``quiet`` seconds (at most ``limit``)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            event = self._next_message(min(deadline, time.monotonic() + quiet))
            if event is None:
                return
            self.events.append(event)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._to_browser)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- serving and checking


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(site: pathlib.Path) -> Iterator[str]:
    """``python -m http.server`` on 127.0.0.1 for ``site``; yields its origin."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    origin = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(origin + "/", timeout=1).close()
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"python -m http.server did not answer on {origin}")
        yield origin
    finally:
        server.terminate()
        server.wait()


def check_pages(chromium: str, origin: str, pages: List[str], screenshot: Optional[pathlib.Path]) -> Dict[str, Tuple[List[str], str]]:
    """Load every page in one tab; ``{page: (problems, what it shows)}``."""
    results: Dict[str, Tuple[List[str], str]] = {}
    with tempfile.TemporaryDirectory(prefix="docs-check-") as profile:
        browser = DevTools(chromium, profile)
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", session=session)
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)  # fmt: skip
            for page in pages:
                results[page] = load_and_judge(browser, session, origin, page)
                if page == "" and screenshot is not None:
                    data = browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    screenshot.write_bytes(base64.b64decode(data))
        finally:
            browser.close()
    return results


def load_and_judge(browser: DevTools, session: str, origin: str, page: str) -> Tuple[List[str], str]:
    """Load ``page``, let it settle, and judge it: ``(problems, what it shows)``."""
    browser.events = []
    browser.send("Page.navigate", {"url": f"{origin}/{page}"}, session)
    if not browser.wait_for(lambda event: event["method"] == "Page.loadEventFired", LOAD_TIMEOUT_S):
        return [f"did not finish loading within {LOAD_TIMEOUT_S} s"], ""
    browser.settle(SETTLE_S, limit=10 * SETTLE_S)
    reply = browser.send("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True}, session)
    facts = json.loads(reply["result"]["value"])
    shows = f"{len(facts['images'])} images, {facts['apiObjects']} API objects, {len(facts['text'])} characters"
    return page_problems(page, browser.events, facts, origin), shows


def find_chromium(given: Optional[str]) -> str:
    for name in ([given] if given else []) + ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: install Debian's package (`apt-get install chromium`) or pass --chromium PATH")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=pathlib.Path, help="the built site (mkdocs build's site_dir)")
    parser.add_argument("--screenshot", type=pathlib.Path, help="save the home page's screenshot here (PNG)")
    parser.add_argument("--chromium", help="the browser executable (default: chromium on PATH)")
    args = parser.parse_args(argv)
    pages = site_pages(args.site)
    if "" not in pages:
        raise SystemExit(f"{args.site} holds no built site (no index.html); run `make docs` first")
    chromium = find_chromium(args.chromium)
    with served(args.site) as origin:
        results = check_pages(chromium, origin, pages, args.screenshot)
    failed = {page: problems for page, (problems, _) in results.items() if problems}
    for page, (problems, shows) in results.items():
        print(f"{'FAIL' if problems else 'ok  '}  /{page:<24} {shows}")
        for problem in problems:
            print(f"        {problem}")
    summary = f"{len(pages) - len(failed)} of {len(pages)} pages passed in {os.path.basename(chromium)}"
    print(summary + (f"; screenshot: {args.screenshot}" if args.screenshot else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
