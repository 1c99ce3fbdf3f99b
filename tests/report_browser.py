"""Headless Chromium for the report's browser tests (tests/test_report.py): the page's DOM after its scripts ran
with every JavaScript error seen, screenshots and a check that they are not blank, and the boxes of the
figures' titles. Needs /usr/bin/chromium (scripts/install_browser.sh); the tests skip without it."""
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

CHROMIUM = Path(os.environ.get("PERTURBCAST_CHROMIUM", "/usr/bin/chromium"))
# Installed at the very top of a copy of the page: records every uncaught error, rejected promise and
# console.error into an attribute of <html>, which --dump-dom then shows.
ERROR_PROBE = """<script>(function () {
  var errors = [];
  function note(text) { errors.push(String(text)); document.documentElement.setAttribute('data-js-errors', JSON.stringify(errors)); }
  window.addEventListener('error', function (e) { note('error: ' + (e.message || e)); });
  window.addEventListener('unhandledrejection', function (e) { note('rejection: ' + (e.reason && e.reason.message || e.reason)); });
  var original = console.error;
  console.error = function () { note('console.error: ' + Array.prototype.join.call(arguments, ' ')); return original.apply(console, arguments); };
  document.documentElement.setAttribute('data-js-errors', '[]');
})();</script>"""

# Collects, after the page drew, every facet title and x-axis title of the per-slice figures with its box, and
# records each pair of boxes in the same figure that intersect.
OVERLAP_PROBE = """
var overlaps = [], count = 0;
['fig-strata', 'fig-raw', 'fig-forest'].forEach(function (id) {
  var boxes = [];
  document.querySelectorAll('#' + id + ' g.annotation, #' + id + ' g[class^="g-x"][class$="title"]').forEach(
    function (el) {
      var r = el.getBoundingClientRect();
      if (r.width > 0 && r.height > 0) { boxes.push({text: el.textContent, r: r}); }
    });
  count += boxes.length;
  for (var i = 0; i < boxes.length; i++) {
    for (var j = i + 1; j < boxes.length; j++) {
      var a = boxes[i].r, b = boxes[j].r;
      if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1) {
        overlaps.push(id + ': ' + boxes[i].text + ' | ' + boxes[j].text);
      }
    }
  }
});
document.body.setAttribute('data-titles', String(count));
document.body.setAttribute('data-overlaps', JSON.stringify(overlaps));
"""


def _chromium(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="perturbcast-chromium-")
    try:
        return subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
             "--host-resolver-rules=MAP * ~NOTFOUND",  # no host resolves: the page must work offline
             f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args],
            capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _console_errors(stderr: str) -> list[str]:
    """Chromium's log lines for console errors and uncaught exceptions of the page."""
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and re.search(r"uncaught|error", line, re.IGNORECASE)]


def render_dom(page: Path, work: Path, after: str = "", *chromium_args: str) -> tuple[str, list[str]]:
    """The DOM after the page's scripts (and the script `after`) ran, in a probed copy of the page, and every
    JavaScript error seen."""
    text = page.read_text(encoding="utf-8")
    probed = work / f"probed_{page.name}"
    text = text.replace("<head>", "<head>" + ERROR_PROBE, 1)
    if after:
        text = text.replace("</body>", f"<script>{after}</script></body>")
    probed.write_text(text, encoding="utf-8")
    done = _chromium(*chromium_args, "--dump-dom", probed.resolve().as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'data-js-errors="([^"]*)"', done.stdout)
    assert match, "the error probe did not run: scripts are not executing"
    errors = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&")) + _console_errors(done.stderr)
    return done.stdout, errors


def screenshot(page: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    done = _chromium(f"--screenshot={target}", "--window-size=1400,2000", page.resolve().as_uri())
    assert done.returncode == 0 and target.exists(), done.stderr[-2000:]
    return target


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """A minimal PNG decoder (8-bit RGB/RGBA, not interlaced, as Chromium writes): width, height, pixel rows."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat, header = 8, [], None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunk = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        position += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, f"unsupported PNG layout {header}"
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        offset = y * (stride + 1)
        kind, line = raw[offset], bytearray(raw[offset + 1:offset + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line[i] for i in range(stride) if channels == 3 or i % 4 != 3))
        previous = line
    return width, height, rows


def assert_not_blank(path: Path):
    width, height, rows = read_png(path)
    assert (width, height) == (1400, 2000)
    pixels = [row[x:x + 3] for row in rows[::7] for x in range(0, len(row), 3 * 5)]
    colours = set(pixels)
    non_white = sum(p != b"\xff\xff\xff" for p in pixels) / len(pixels)
    assert len(colours) > 200, f"only {len(colours)} colours: the screenshot looks blank"
    assert non_white > 0.2, f"only {non_white:.0%} of the screenshot is not white"


def overlapping_titles(page: Path, work: Path) -> tuple[int, list[str]]:
    """How many titles the per-slice figures of `page` show in a 1400 px wide window, and which overlap."""
    dom, errors = render_dom(page, work, OVERLAP_PROBE, "--window-size=1400,3000")
    assert errors == [], errors
    count = int(re.search(r'data-titles="(\d+)"', dom).group(1))
    overlaps = json.loads(re.search(r'data-overlaps="([^"]*)"', dom).group(1).replace("&quot;", '"')
                          .replace("&amp;", "&"))
    return count, overlaps
