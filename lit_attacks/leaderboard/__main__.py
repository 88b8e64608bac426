"""``python -m lit_attacks.leaderboard build DIR... --out SITE``: merge results entries into a leaderboard site."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from lit_attacks.leaderboard.entry import EntryError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lit_attacks.leaderboard", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="merge entries into SITE/leaderboard.md, leaderboard.json and index.html")
    b.add_argument("dirs", nargs="+", metavar="DIR", help="bench results folders, folders of entries or entry files")
    b.add_argument("--out", required=True, metavar="SITE", help="the site folder (created)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    from lit_attacks.leaderboard.site import build

    try:
        board = build(a.dirs, a.out)
    except EntryError as e:
        print(f"python -m lit_attacks.leaderboard: error: {e}", file=sys.stderr)
        return 2
    n = sum(len(g["rows"]) for g in board["groups"])
    print(f"{n} entries in {len(board['groups'])} group(s): {a.out}/index.html, leaderboard.md, leaderboard.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
