"""``python -m lit_attacks.leaderboard build DIR... --out SITE``: merge results entries into a leaderboard site."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from lit_attacks.safe_files import InputError


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

    notes: list = []
    try:
        board = build(a.dirs, a.out, notes)
    except InputError as e:  # a bad entry, input or site folder
        _say(notes)
        print(f"python -m lit_attacks.leaderboard: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder made read-only: the site's manifest still lists what was written
        _say(notes)
        print(f"python -m lit_attacks.leaderboard: error: {e.filename or a.out}: {e.strerror or e}; fix this and run "
              "the same command again (it replaces or removes what this build wrote)", file=sys.stderr)
        return 1
    _say(notes)
    n = sum(len(g["rows"]) for g in board["groups"])
    print(f"{n} entries in {len(board['groups'])} group(s): {a.out}/index.html, leaderboard.md, leaderboard.json")
    return 0


def _say(notes) -> None:
    for line in notes:
        print(f"python -m lit_attacks.leaderboard: note: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
