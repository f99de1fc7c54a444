"""A report rendered by a real headless browser: Debian's `chromium`, as a new user opens it.

`--dump-dom` gives the DOM, not what was drawn, so a copy of the page gets a probe script
that, once the page has loaded, records what the renderer computed (the visible text, the
plot's decoded size, each trial row's checks and colours) into an element the dump then
holds. The screenshot is taken of the page itself, without the probe.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.tools import tool

WINDOW = (1280, 2000)
# Root in CI: Chromium refuses its sandbox there. No GPU, no first-run UI, no shared profile.
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]

_PROBE = """<script>
addEventListener('load', () => {
  const img = document.getElementById('pareto');
  const box = (el) => el && {top: el.getBoundingClientRect().top,
                             height: el.getBoundingClientRect().height, text: el.innerText};
  const trials = [...document.querySelectorAll('#trials tr.trial')].map((row) => ({
    number: Number(row.dataset.trial),
    failed: row.classList.contains('failed'),
    checks: row.querySelector('.checks').innerText,
    checksTitle: row.querySelector('.checks').title,
    figureColor: getComputedStyle(row.querySelector('td.figure')).color,
    details: box(document.querySelector(`tr[data-details="${row.dataset.trial}"]`)),
  }));
  const probe = {
    text: document.body.innerText,
    image: img && {complete: img.complete, naturalWidth: img.naturalWidth,
                   naturalHeight: img.naturalHeight, alt: img.alt,
                   shownHeight: img.getBoundingClientRect().height},
    banner: box(document.getElementById('provenance')),
    verdict: box(document.getElementById('verdict')),
    caveats: box(document.getElementById('caveats')),
    trials,
  };
  const out = document.createElement('pre');
  out.id = 'jouletune-probe';
  out.textContent = JSON.stringify(probe);
  document.body.append(out);
});
</script>"""


@dataclass(frozen=True)
class Rendered:
    """What the browser made of a report.

    Attributes:
        probe: what the renderer computed (see `_PROBE`): `text`, `image`, `banner`,
            `verdict`, `caveats`, `trials`.
        screenshot: the page as drawn in a `WINDOW`-sized window, PNG.
    """

    probe: dict[str, Any]
    screenshot: Path


def render(report: Path, tmp: Path) -> Rendered:
    """Open `report` in headless Chromium: a screenshot, and the probe's findings."""
    chromium = tool("chromium")
    profile = f"--user-data-dir={tmp / 'chromium-profile'}"
    shot = tmp / "report.png"
    size = f"--window-size={WINDOW[0]},{WINDOW[1]}"
    _run([chromium, *_FLAGS, profile, f"--screenshot={shot}", size, report.as_uri()])
    probed = tmp / "probed.html"
    probed.write_text(report.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _run([chromium, *_FLAGS, profile, "--dump-dom", probed.as_uri()])
    start = dom.index('<pre id="jouletune-probe">') + len('<pre id="jouletune-probe">')
    raw = dom[start : dom.index("</pre>", start)]
    return Rendered(probe=json.loads(_unescape(raw)), screenshot=shot)


def _run(args: list[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    return proc.stdout


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)
