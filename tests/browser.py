"""Headless Chromium for the tests that look at a page as a person does: is a part of it drawn,
inside the window, on top (nothing painted over it), clear of every other part; and a
screenshot kept for a human to look at after the run.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: it reads
commands on fd 3 and writes answers on fd 4, NUL-separated JSON), so no websocket client is needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="/usr/bin/chromium is not installed (apt-get install -y chromium)")
ROOT = Path(__file__).resolve().parents[1]
DESKTOP = (1280, 800)
PHONE = (390, 844)
HALF_SCREEN = (700, 800)  # a browser beside an editor on a laptop


def screenshot_dir() -> Path:
    """Where the screenshots are kept after the run: $GRAFT_SCREENSHOTS, else <repo>/.screenshots/."""
    where = Path(os.environ.get("GRAFT_SCREENSHOTS") or ROOT / ".screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


ON_FDS_3_4 = """import os, sys
r, w = int(sys.argv[1]), int(sys.argv[2])
os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w)
os.execv(sys.argv[3], sys.argv[3:])"""


class DevTools:
    """One headless Chromium and its protocol pipe."""

    def __init__(self, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # above any fd the child must end up with, so moving them onto 3 and 4 clobbers nothing
        far = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, out_w)]
        for fd in (cmd_r, out_w):
            os.close(fd)
        chrome = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen([sys.executable, "-c", ON_FDS_3_4, *map(str, far), *chrome], pass_fds=far,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for fd in far:
            os.close(fd)
        self._next = 0
        self._answers: dict[int, dict] = {}
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            data = os.read(self._out_r, 1 << 16)
            if not data:
                break
            buf += data
            *messages, buf = buf.split(b"\0")
            with self._cv:
                for m in messages:
                    msg = json.loads(m)
                    if "id" in msg:
                        self._answers[msg["id"]] = msg
                self._cv.notify_all()

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError(f"chromium exited: {self.proc.stderr.read().decode()[-2000:]}") from None
        with self._cv:
            assert self._cv.wait_for(lambda: self._next in self._answers, timeout=60), f"{method}: no answer"
            answer = self._answers.pop(self._next)
        assert "error" not in answer, answer
        return answer["result"]

    def tab(self, size=DESKTOP) -> Tab:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        return Tab(self, self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"], size)

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._cmd_w)


# For each element a selector finds: is it drawn, inside the window, on top where its box and its
# text are (what elementFromPoint hits there is it or inside it), whether the pieces of its box
# (an inline box broken over lines) cover each other, and which other drawn elements (not its
# ancestors or descendants) its box overlaps by more than a pixel each way; and how far the page
# spills past the window's right edge (a sideways scroll bar).
LAYOUT = """(function (selectors, scroll) {
  const root = document.documentElement, vw = root.clientWidth, vh = root.clientHeight;
  const drawn = (e) => { const r = e.getBoundingClientRect();  // (not inside a closed <details>, say)
    return r.width > 0 && r.height > 0
      && e.checkVisibility({contentVisibilityAuto: true, opacityProperty: true, visibilityProperty: true}); };
  const name = (e) => e ? e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
    + [...e.classList].map((c) => "." + c).join("") : "nothing";
  const meet = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1
    && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  const out = [];
  for (const sel of selectors) {
    const found = [...document.querySelectorAll(sel)];
    if (!found.length) out.push({selector: sel, missing: true});
    for (const e of found) {
      if (scroll) e.scrollIntoView({block: "start"});
      const r = e.getBoundingClientRect(), text = document.createRange();
      text.selectNodeContents(e);
      const boxes = [r, ...text.getClientRects()].filter((b) => b.width > 0 && b.height > 0);
      const points = boxes.map((b) => [b.left + b.width / 2, b.top + b.height / 2])
        .filter(([x, y]) => x >= 0 && y >= 0 && x < vw && y < vh);
      const hits = points.map(([x, y]) => document.elementFromPoint(x, y));
      out.push({selector: sel, element: name(e), text: e.innerText.trim().slice(0, 80), drawn: drawn(e),
        box: [r.left, r.top, r.width, r.height].map(Math.round),
        inside: r.left >= -0.5 && r.right <= vw + 0.5
          && (scroll || (r.top >= -0.5 && r.bottom <= vh + 0.5)),
        probed: points.length,
        pieces_overlap: [...e.getClientRects()].some((a, i, all) => all.slice(i + 1).some((b) => meet(a, b))),
        covered_by: [...new Set(hits.filter((h) => !(h && (h === e || e.contains(h)))).map(name))],
        overlaps: [...document.body.querySelectorAll("*")]
          .filter((o) => o !== e && !o.contains(e) && !e.contains(o) && drawn(o)
                  && meet(r, o.getBoundingClientRect())).map(name)});
    }
  }
  if (scroll) window.scrollTo(0, 0);
  return JSON.stringify({elements: out, wider_by: root.scrollWidth - vw});
})"""


class Tab:
    """One page in the browser, at a fixed window size."""

    def __init__(self, browser: DevTools, session: str, size):
        self.browser, self.session = browser, session
        self.resize(size)

    def send(self, method: str, **params) -> dict:
        return self.browser.send(method, self.session, **params)

    def resize(self, size):
        self.size = size
        self.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=size[0] < 600)

    def open(self, url: str):
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", "the page never finished loading")

    def eval(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def wait_for(self, expression: str, why: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.eval(f"!!({expression})")):
            assert time.monotonic() < deadline, why
            time.sleep(0.1)
        return value

    def pick_files(self, selector: str, files):
        """Choose `files` in the page's <input type=file>, as a person does in the file dialog."""
        root = self.send("DOM.getDocument", depth=0)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])

    def layout(self, selectors, scroll: bool = False) -> dict:
        """LAYOUT for each selector; scroll=True scrolls each element to the window's top first (for
        a page taller than the window) and asks only that it fits the window's width."""
        return json.loads(self.eval(f"{LAYOUT}({json.dumps(list(selectors))}, {json.dumps(scroll)})"))

    def screenshot(self, name: str) -> Path:
        """The whole page as a PNG in screenshot_dir(), kept for a human to look at."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": max(size["width"], self.size[0]),
                "height": max(size["height"], self.size[1]), "scale": 1}
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        path = screenshot_dir() / name
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def problems(seen: dict) -> list[str]:
    """What a person would not see in a layout() answer, one line each (empty when all is well)."""
    out = [f"the page is {seen['wider_by']} px wider than the window"] if seen["wider_by"] > 0 else []
    for s in seen["elements"]:
        where = f"{s['selector']} ({s.get('element')} {s.get('text', '')[:40]!r} at {s.get('box')})"
        if s.get("missing"):
            out.append(f"{s['selector']}: not on the page")
            continue
        if not s["drawn"]:
            out.append(f"{where}: not drawn (no size, hidden or transparent)")
        if not s["inside"]:
            out.append(f"{where}: not inside the window")
        if not s["probed"]:
            out.append(f"{where}: no part of it in the window")
        if s["pieces_overlap"]:
            out.append(f"{where}: drawn in pieces that cover each other (an inline box over several lines)")
        if s["covered_by"]:
            out.append(f"{where}: painted over by {s['covered_by']}")
        if s["overlaps"]:
            out.append(f"{where}: overlaps {s['overlaps']}")
    return out


def assert_seen(seen: dict, when: str, shot: Path):
    """Fail with problems(seen), one a line, naming the screenshot to look at."""
    found = problems(seen)
    assert not found, f"{when}, a person would not see the page right (screenshot: {shot}):\n  " + "\n  ".join(found)
