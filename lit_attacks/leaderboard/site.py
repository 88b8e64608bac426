"""The leaderboard site from any number of results entries: ``leaderboard.md``, ``leaderboard.json``, ``index.html``.

``python -m lit_attacks.leaderboard build DIR... --out SITE``: DIR is a bench results folder (its
``leaderboard/`` entries), a folder of entries, or one entry file. Entries are grouped by (dataset, protocol);
within a group every entry must have the same protocol and dataset fingerprints (else the build stops, naming
both files: numbers of different protocols or data are never put side by side). One row per metric (the newest
entry when a metric appears twice); a column per radius; the sanity flags beside each row; one plot per group of
robust accuracy against radius, every metric a line. SITE gets copies of the entries it links, so it can be
served or opened anywhere; a rebuild removes only the files an earlier build of SITE wrote.
"""
from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lit_attacks.folders import BENCH_MANIFEST, SITE_MANIFEST, claimed, run_finished
from lit_attacks.leaderboard.entry import EntryError, entry_date, read_entry
from lit_attacks.report import BROKEN_IMAGES_SCRIPT, atomic_write
from lit_attacks.safe_files import InputError, file_stem, open_regular

MANIFEST = SITE_MANIFEST
FLAG_NAMES = {"black_box_beat_white_box": "black-box beat white-box",
              "zero_or_nonfinite_gradients": "zero/non-finite grad",
              "stochastic_without_eot": "stochastic, no EOT", "flip_lost_in_uint8": "flip lost in 8-bit"}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


def find_entries(paths: Sequence[str | Path], notes: Optional[List[str]] = None) -> List[Path]:
    """Entry files under each path: a file as it is; in a folder, every ``leaderboard/<dataset>/<protocol>/*.json``
    below it (bench results folders, at any depth), else every ``*.json`` below it that is an entry (a folder of
    copied entries). Never followed: symlinks. Skipped, each with a line in ``notes``: a leaderboard site inside a
    folder (its entries are copies of others) and the entries of a bench run that did not finish (its manifest says
    so: the run stopped before its last file). A path that is itself a site is refused."""
    notes = notes if notes is not None else []
    found: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / MANIFEST).exists():
            raise EntryError(f"{p} is a leaderboard site (it holds {MANIFEST}): its entries are copies; give the bench "
                             "results folders or entry folders it was built from")
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            files = _json_files(p, notes)
            runs = [f for f in files if len(f.parts) >= 4 and f.parts[-4] == "leaderboard"]
            found += _finished(runs, notes) if runs else [f for f in files if _is_entry(f)]
        else:
            raise EntryError(f"{p}: no such file or folder")
    if not found:
        raise EntryError(f"no leaderboard entries under {', '.join(map(str, paths))} (a bench run writes them with "
                         "--config leaderboard_quick, in <out>/leaderboard/)")
    return list(dict.fromkeys(found))


def _json_files(root: Path, notes: List[str]) -> List[Path]:
    """Regular ``*.json`` files below ``root``, sorted, not through symlinks, not inside a leaderboard site."""
    out: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):  # never follows links
        here = Path(dirpath)
        if here != root and (here / MANIFEST).exists():
            notes.append(f"skipped {here}: a leaderboard site (its entries are copies)")
            dirnames[:] = []
            continue
        dirnames.sort()
        out += [here / n for n in sorted(filenames) if n.endswith(".json") and (here / n).is_file()
                and not (here / n).is_symlink()]
    return out


def _finished(files: List[Path], notes: List[str]) -> List[Path]:
    """The entries of bench runs that finished (an entry folder without a bench manifest is taken as it is)."""
    kept = []
    for f in files:
        run = Path(*f.parts[:-4]) if len(f.parts) > 4 else Path(".")
        if (run / BENCH_MANIFEST).exists() and not run_finished(run):
            notes.append(f"skipped {f}: the bench run in {run} did not finish (run its command again to finish it)")
            continue
        kept.append(f)
    return kept


def _is_entry(path: Path) -> bool:
    """The file starts like an entry (its size is checked when it is read: an oversized entry is refused by name)."""
    try:
        with open_regular(path, "file") as f:
            return b'"schema_version"' in f.read(200)
    except (InputError, OSError):
        return False


def group_entries(files: Sequence[Path]) -> Dict[Tuple[str, str], Dict[str, Tuple[Path, Dict[str, Any]]]]:
    """(dataset, protocol) -> metric -> (file, entry); refuses a protocol or dataset fingerprint that differs
    within a group. A metric entered twice keeps its newest entry (dates compared as times, across time zones)."""
    groups: Dict[Tuple[str, str], Dict[str, Tuple[Path, Dict[str, Any]]]] = {}
    first: Dict[Tuple[str, str], Tuple[Path, Dict[str, Any]]] = {}
    for f in files:
        e = read_entry(f)
        g = (e["dataset"]["name"], e["protocol"]["name"])
        if g in first:
            f0, e0 = first[g]
            for part in ("protocol", "dataset"):
                if e[part]["fingerprint"] != e0[part]["fingerprint"]:
                    raise EntryError(f"{f} and {f0}: both say {part} {g[0] if part == 'dataset' else g[1]!r} but "
                                     f"their {part} fingerprints differ ({e[part]['fingerprint']} vs "
                                     f"{e0[part]['fingerprint']}): rename one protocol or dataset, or rerun")
        else:
            first[g] = (f, e)
        rows = groups.setdefault(g, {})
        name = e["metric"]["name"]
        if name not in rows or entry_date(e) >= entry_date(rows[name][1]):
            rows[name] = (f, e)
    return groups


def columns(entry: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(key, heading) of the numeric columns of a group (from its first entry: all share the protocol)."""
    cols = [("clean", "clean")]
    cols += [(f"{r['norm']}:{r['radius']:g}", f"{r['norm']} {r['radius']:g}" + ("/255" if r["norm"] == "linf" else ""))
             for r in entry["results"]["robust"]]
    cols += [(f"auc:{k}", f"AUC {k}") for k in ("linf", "l2") if k in entry["results"]["auc"]]
    cols += [(f"cert:{c['radius']:g}", f"certified {c['radius']:g}") for c in entry["results"]["certified"]]
    for c in entry["results"].get("certified_lipschitz", []):  # LipSim's certificate, then our sound radius
        cols += [(f"lip:{c['radius_255']:g}", f"LipSim certified {c['radius_255']:g}/255"),
                 (f"sound:{c['radius_255']:g}", f"sound certified {c['radius_255']:g}/255")]
    return cols


def values(entry: Dict[str, Any]) -> Dict[str, Any]:
    """key -> (value, ci95) for a row; AUCs have no interval."""
    r = entry["results"]
    out: Dict[str, Any] = {"clean": (r["clean"]["value"], r["clean"]["ci95"])}
    out.update({f"{x['norm']}:{x['radius']:g}": (x["accuracy"]["value"], x["accuracy"]["ci95"]) for x in r["robust"]})
    out.update({f"auc:{k}": (v, None) for k, v in r["auc"].items() if k in ("linf", "l2")})
    out.update({f"cert:{c['radius']:g}": (c["accuracy"]["value"], c["accuracy"]["ci95"]) for c in r["certified"]})
    for c in r.get("certified_lipschitz", []):
        out[f"lip:{c['radius_255']:g}"] = (c["accuracy"]["value"], c["accuracy"]["ci95"])
        out[f"sound:{c['radius_255']:g}"] = (c["accuracy_sound"]["value"], c["accuracy_sound"]["ci95"])
    return out


def pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def flags_of(entry: Dict[str, Any]) -> List[str]:
    return [f"{FLAG_NAMES[k]} ({f['samples']})" for k, f in entry["sanity"].items() if f["raised"]]


def build(paths: Sequence[str | Path], out: str | Path, notes: Optional[List[str]] = None) -> Dict[str, Any]:
    """Merge the entries under ``paths`` into the site at ``out``; returns what leaderboard.json holds. ``out`` is
    claimed by the folder guard (:class:`lit_attacks.folders.OwnedFolder`): a new or empty folder, or one an earlier
    build made (its manifest); nothing is written through a symlink, and a rebuild removes only the files an earlier
    build wrote and this one did not. Lines about skipped inputs go to ``notes``."""
    out = Path(out)
    if os.path.lexists(out) and (os.path.islink(out) or not out.is_dir()):
        raise EntryError(f"--out {out}: exists and is not a folder (or is a symlink)")
    groups = group_entries(find_entries(paths, notes))
    with claimed(out, MANIFEST, "leaderboard", arg="--out", what="site folder", kind="leaderboard site",
                 exempt=()) as site:
        board = _write_site(out, groups)
        site.remove_all([rel for rel in site.files if rel not in set(site.written)])
    return board


def _write_site(out: Path, groups: Dict[Tuple[str, str], Dict[str, Tuple[Path, Dict[str, Any]]]]) -> Dict[str, Any]:
    board: Dict[str, Any] = {"schema_version": 1, "groups": []}
    for (dataset, protocol), rows in sorted(groups.items()):
        first = next(iter(rows.values()))[1]
        cols = columns(first)
        group = {"dataset": dataset, "protocol": protocol, "protocol_fingerprint": first["protocol"]["fingerprint"],
                 "dataset_fingerprint": first["dataset"]["fingerprint"], "samples": first["results"]["clean"]["n"],
                 "description": first["protocol"].get("description", ""), "columns": [h for _, h in cols],
                 "plot": f"plots/{file_stem(dataset)}-{file_stem(protocol)}.svg", "rows": []}
        ordered = sorted(rows.items(), key=lambda kv: -(kv[1][1]["results"]["auc"].get("linf") or -1))
        for name, (src, e) in ordered:
            rel = f"entries/{file_stem(dataset)}/{file_stem(protocol)}/{file_stem(name)}.json"
            atomic_write(out / rel, json.dumps(e, indent=1) + "\n")
            v = values(e)
            group["rows"].append({"metric": e["metric"]["label"], "name": name, "entry": rel, "source": str(src),
                                  "values": {h: v.get(k, (None, None))[0] for k, h in cols},
                                  "ci95": {h: v.get(k, (None, None))[1] for k, h in cols},
                                  "flags": flags_of(e), "date": e["date"]})
        atomic_write(out / group["plot"], plot_svg(group, [e for _, (_, e) in ordered]))
        board["groups"].append(group)
    atomic_write(out / "leaderboard.json", json.dumps(board, indent=1) + "\n")
    atomic_write(out / "leaderboard.md", markdown(board))
    atomic_write(out / "index.html", page(board))
    return board


MD_SPECIAL = re.compile(r"([\\`|\[\]])")  # escapes, code spans, table cells, links and images


def md(text: Any) -> str:
    """Text from an entry as inert Markdown on one line: HTML's ``& < >`` as entities (GitHub, MkDocs and Jekyll
    render raw HTML in Markdown), the Markdown that could change the page's structure backslash-escaped (``|`` would
    end a table cell, ``[`` start a link or an image, a backquote a code span), line breaks as spaces."""
    s = " ".join(str(text).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MD_SPECIAL.sub(r"\\\1", s)


def markdown(board: Dict[str, Any]) -> str:
    lines = ["# Perceptual-metric robustness leaderboard", "",
             "2AFC accuracy (%) on the protocol's samples (the unanimous ones unless its description says all); "
             "radii on [0, 1] images (l_inf in 1/255). Robust: the metric "
             "ranks like the humans and no attack of the protocol flips it within the radius; certified: randomized "
             "smoothing certifies it; LipSim certified: LipSim's certificate as its code computes it, sound: ours, "
             "valid for any embedding norm. AUC: area under robust accuracy against the budget (0-1). Sorted by AUC "
             "l_inf.", ""]
    for g in board["groups"]:
        lines += [f"## {md(g['dataset'])} / {md(g['protocol'])} ({g['samples']} samples)", "", md(g["description"]),
                  "", "| metric | " + " | ".join(md(c) for c in g["columns"]) + " | flags |",
                  "|---|" + "---|" * (len(g["columns"]) + 1)]
        for r in g["rows"]:
            cells = [f"{r['values'][c]:.3f}" if c.startswith("AUC") and r["values"][c] is not None
                     else pct(r["values"][c]) for c in g["columns"]]
            lines.append(f"| {md(r['metric'])} | " + " | ".join(cells) + f" | {md(', '.join(r['flags']) or '-')} |")
        lines += ["", f"![robust accuracy against radius]({g['plot']})", ""]
    return "\n".join(lines) + "\n"


def plot_svg(group: Dict[str, Any], entries: List[Dict[str, Any]]) -> str:
    """Robust accuracy (%) against radius, one panel per norm, one line per metric (radius 0: clean)."""
    W, H, pad, gap = 360, 240, 44, 30
    norms = [n for n in ("linf", "l2") if any(r["norm"] == n for e in entries for r in e["results"]["robust"])]
    total_w = pad + len(norms) * (W + gap) + 170
    height = max(H + 2 * pad, pad + 16 * len(entries) + 16)  # the legend: one line per metric
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" '
             f'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>']
    for i, norm in enumerate(norms):
        x0, y0 = pad + i * (W + gap), pad
        rmax = max(r["radius"] for e in entries for r in e["results"]["robust"] if r["norm"] == norm) or 1.0
        X = lambda r: x0 + W * r / rmax  # noqa: E731
        Y = lambda a: y0 + H * (1 - a)  # noqa: E731
        parts.append(f'<rect x="{x0}" y="{y0}" width="{W}" height="{H}" fill="none" stroke="#444"/>')
        for a in (0, 0.25, 0.5, 0.75, 1):
            parts.append(f'<line x1="{x0}" x2="{x0 + W}" y1="{Y(a):.1f}" y2="{Y(a):.1f}" stroke="#ddd"/>'
                         f'<text x="{x0 - 6}" y="{Y(a) + 4:.1f}" text-anchor="end">{100 * a:.0f}</text>')
        radii = sorted({r["radius"] for e in entries for r in e["results"]["robust"] if r["norm"] == norm})
        for r in [0.0] + radii:
            parts.append(f'<text x="{X(r):.1f}" y="{y0 + H + 14}" text-anchor="middle">{r:g}</text>')
        unit = "l_inf radius (1/255)" if norm == "linf" else "l_2 radius ([0, 1] images)"
        parts.append(f'<text x="{x0 + W / 2}" y="{y0 + H + 30}" text-anchor="middle">{unit}</text>')
        parts.append(f'<text x="{x0}" y="{y0 - 8}">robust 2AFC accuracy (%), {html.escape(group["dataset"])} / '
                     f'{html.escape(group["protocol"])}</text>')
        for j, e in enumerate(entries):
            pts = [(0.0, e["results"]["clean"]["value"])] + [(r["radius"], r["accuracy"]["value"])
                                                             for r in e["results"]["robust"] if r["norm"] == norm]
            pts = [(r, a) for r, a in pts if a is not None]
            c, dash = COLOURS[j % len(COLOURS)], _dash(j)
            parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="'
                         + " ".join(f"{X(r):.1f},{Y(a):.1f}" for r, a in pts) + '"/>')
            parts += [f'<circle cx="{X(r):.1f}" cy="{Y(a):.1f}" r="2.5" fill="{c}"/>' for r, a in pts]
    lx = pad + len(norms) * (W + gap)
    for j, e in enumerate(entries):
        c, dash = COLOURS[j % len(COLOURS)], _dash(j)
        parts.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{pad + 8 + 16 * j}" y2="{pad + 8 + 16 * j}" stroke="{c}" '
                     f'stroke-width="2"{dash}/><text x="{lx + 24}" y="{pad + 12 + 16 * j}">'
                     f'{html.escape(e["metric"]["label"][:26])}</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def _dash(j: int) -> str:
    """Solid lines for the first ten metrics, then dashed, then dotted: colours repeat, line styles tell them apart."""
    return ["", ' stroke-dasharray="6,3"', ' stroke-dasharray="2,2"'][(j // len(COLOURS)) % 3]


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1240px;color:#222}
.wrap{overflow-x:auto}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f2f2f2;cursor:pointer}td:first-child,th:first-child,td.flags{text-align:left}
td.flags{color:#a00;white-space:normal;max-width:16em}img{max-width:100%;border:1px solid #ccc}
.note{color:#555;font-size:13px}"""
SCRIPT = """document.querySelectorAll('table.board').forEach(function(t){
t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
var rows=Array.from(t.tBodies[0].rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
rows.sort(function(a,b){var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;
if(x===undefined){x=a.cells[i].textContent;y=b.cells[i].textContent;return asc?x.localeCompare(y):y.localeCompare(x);}
x=parseFloat(x);y=parseFloat(y);x=isNaN(x)?-1:x;y=isNaN(y)?-1:y;return asc?x-y:y-x;});
rows.forEach(function(r){t.tBodies[0].appendChild(r);});});});});"""


def page(board: Dict[str, Any]) -> str:
    e = html.escape
    body = ["<h1>Perceptual-metric robustness leaderboard</h1>",
            "<p class='note'>2AFC accuracy (%) on the protocol's samples (the unanimous ones unless its description "
            "says all), with 95% Clopper-Pearson intervals on hover; "
            "radii on [0, 1] images (l_inf in 1/255). Robust: ranked like the humans and not flipped by any attack "
            "of the protocol; certified: randomized smoothing; LipSim certified: LipSim's certificate, sound: ours. "
            "AUC: area under robust accuracy against the budget. "
            "Click a column to sort. Flags: checks a reviewer makes before believing a robust number "
            "(see each entry's <code>sanity</code>).</p>"]
    for g in board["groups"]:
        body.append(f"<h2>{e(g['dataset'])} / {e(g['protocol'])} ({g['samples']} samples)</h2>"
                    f"<p class='note'>{e(g['description'])}. Protocol fingerprint {e(g['protocol_fingerprint'])}, "
                    f"data fingerprint {e(g['dataset_fingerprint'])}.</p>")
        head = "".join(f"<th>{e(c)}</th>" for c in ["metric"] + g["columns"] + ["flags", "entry"])
        rows = []
        for r in g["rows"]:
            cells = [f"<td>{e(r['metric'])}</td>"]
            for c in g["columns"]:
                v, ci = r["values"][c], r["ci95"][c]
                text = f"{v:.3f}" if c.startswith("AUC") and v is not None else pct(v)
                tip = f" title='95% CI {pct(ci[0])}-{pct(ci[1])}'" if ci and ci[0] is not None else ""
                cells.append(f"<td data-v='{'' if v is None else v}'{tip}>{text}</td>")
            cells.append(f"<td class='flags'>{e(', '.join(r['flags'])) or '-'}</td>")
            cells.append(f"<td><a href='{e(r['entry'])}'>json</a></td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        body.append(f"<div class='wrap'><table class='board'><thead><tr>{head}</tr></thead><tbody>"
                    + "".join(rows) + "</tbody></table></div>")
        body.append(f"<p><img src='{e(g['plot'])}' alt='robust accuracy against radius, {e(g['protocol'])}'></p>")
    body.append("<p class='note'>Built by <code>python -m lit_attacks.leaderboard build</code>; "
                "<a href='leaderboard.json'>leaderboard.json</a>, <a href='leaderboard.md'>leaderboard.md</a>.</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Leaderboard</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}<script>{SCRIPT}{BROKEN_IMAGES_SCRIPT}</script></body></html>\n")
