"""index.html of a results folder: one static page (no server, no external resources) with the run's
tables, plots and example grids, and links to every file."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from lit_attacks.report import BROKEN_IMAGES_SCRIPT

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee;margin:.3em 0}.warn{background:#fff3cd;padding:.6em;border:1px solid #e0c060}
code{background:#f5f5f5;padding:1px 4px}figure{margin:1em 0}figcaption{font-size:13px;color:#555}
.wrap{overflow-x:auto;max-width:100%}.legend{font-size:13px;color:#444}"""
SCRIPT = BROKEN_IMAGES_SCRIPT


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape("" if v is None else str(v))


def table_html(rows: Sequence[Dict[str, Any]]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(out: Path, title: str, command: str, notes: List[str],
           tables: List[Tuple[str, str, List[Dict[str, Any]], List[str]]], figures: Sequence[Path],
           files: Sequence[str]) -> str:
    """The page. ``tables``: (anchor, title, rows, legend) per table (the rows each table shows on the page, its
    CSV linked beside them); ``figures``: PNG paths under ``out``."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p><code>{html.escape(command)}</code></p>"]
    parts += [f"<p class='warn'>{html.escape(n)}</p>" for n in notes]
    parts.append("<p>Contents: " + " | ".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t, *_ in tables)
                 + " | <a href='#figures'>figures</a> | <a href='#files'>files</a> | "
                   "<a href='README.md'>README.md</a> | <a href='summary.json'>summary.json</a></p>")
    for anchor, name, rows, legend in tables:
        parts.append(f"<h2 id='{anchor}'>{html.escape(name)}</h2>")
        csv = out / f"{anchor}.csv"
        if csv.is_file():
            parts.append(f"<p><a href='{anchor}.csv'>{anchor}.csv</a> (every column)</p>")
        parts.append(f"<div class='wrap'>{table_html(rows)}</div>")
        if legend:
            parts.append("<ul class='legend'>" + "".join(f"<li>{html.escape(x)}</li>" for x in legend) + "</ul>")
    parts.append("<h2 id='figures'>Figures</h2>")
    for fig in figures:
        rel = fig.relative_to(out).as_posix()
        parts.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(fig.stem)}'>"
                     f"<figcaption>{html.escape(rel)}</figcaption></figure>")
    parts.append("<h2 id='files'>Files</h2><ul>")
    parts += [f"<li><a href='{html.escape(f)}'>{html.escape(f)}</a></li>" for f in files]
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"
