"""Text for the page: escaping, numbers, links from references, component descriptions, JSON in a script."""
from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pandas as pd


def esc(value) -> str:
    """HTML-escaped text (None as empty)."""
    return html.escape("" if value is None else str(value))


def finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt(value, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if finite(value) else "–"


def fmt_general(value) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.3g}"
    return esc(value)


def clean(value):
    """JSON-safe: NaN and inf become null, numpy scalars plain."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Series, pd.Index)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_for_script(payload) -> str:
    text = json.dumps(clean(payload), separators=(",", ":"), allow_nan=False)
    # inside <script> the only sequence that can end the element early is '</'
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def doi_links(references) -> str:
    if not isinstance(references, dict):
        return ""
    links = []
    for doi in references.get("doi") or []:
        doi = str(doi).strip()
        links.append(f'<a href="https://doi.org/{esc(doi)}">doi:{esc(doi)}</a>')
    for entry in references.get("bibtex") or []:
        links.append(_bibtex_link(str(entry)))
    return ", ".join(links)


def _bibtex_field(entry: str, name: str) -> str | None:
    """One field of a bibtex entry: `{...}` with nested braces, `"..."` or a bare word."""
    match = re.search(rf"(?:^|[,\s{{]){name}\s*=\s*", entry, re.IGNORECASE)
    if not match:
        return None
    rest = entry[match.end():]
    if rest.startswith("{"):
        depth = 0
        for index, char in enumerate(rest):
            depth += char == "{"
            depth -= char == "}"
            if depth == 0:
                return rest[1:index].strip()
        return None
    if rest.startswith('"'):
        end = rest.find('"', 1)
        return rest[1:end].strip() if end > 0 else None
    return re.split(r"[,}\s]", rest, maxsplit=1)[0].strip() or None


def _bibtex_link(entry: str) -> str:
    """A bibtex reference as its title (and year), linked through its doi or url when it has one."""
    title = _bibtex_field(entry, "title") or entry.strip().splitlines()[0][:100]
    title = re.sub(r"[{}]", "", title)
    year = _bibtex_field(entry, "year")
    label = esc(title) + (f" ({esc(year)})" if year else "")
    doi, url = _bibtex_field(entry, "doi"), _bibtex_field(entry, "url")
    href = f"https://doi.org/{doi}" if doi else url if url and url.startswith(("http://", "https://")) else None
    return f'<a href="{esc(href)}">{label}</a>' if href else label


def links(named) -> str:
    if not isinstance(named, dict):
        return ""
    shown = []
    for name, url in named.items():
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            shown.append(f'<a href="{esc(url)}">{esc(name.replace("_", " "))}</a>')
    return " · ".join(shown)


def paragraphs(text) -> str:
    """Component descriptions: blank-line separated paragraphs, `code` spans kept as code."""
    if not text:
        return ""
    blocks = [" ".join(line.strip() for line in block.splitlines()) for block in str(text).strip().split("\n\n")]
    out = []
    for block in blocks:
        parts = esc(block).split("`")
        out.append("<p>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + "</p>")
    return "".join(out)


def inline_code(text) -> str:
    parts = esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
