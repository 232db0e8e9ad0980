"""Top frames of a py-spy raw (collapsed-stack) profile: self and inclusive shares of the samples.

    .venv/bin/py-spy record --nonblocking -d 20 -r 50 -f raw -o prof.txt --pid PID   # a running worker
    .venv/bin/python bench/spy_top.py prof.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path


def _name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func file.py`` (lines differ within one function)."""
    m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    return frame if m is None else f"{m.group(1)} {m.group(2).rsplit('/', 1)[-1]}"


def tops(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples per frame, inclusive samples per frame) of a collapsed-stack file."""
    total, own, incl = 0, Counter[str](), Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [_name(f) for f in stack.split(";")]
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    return total, own, incl


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spy_top", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", type=Path, nargs="+")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--max-share", type=float, default=0.7, help="inclusive: skip frames in more samples than this")
    args = p.parse_args(argv)
    for path in args.profile:
        total, own, incl = tops(path)
        print(f"{path}: {total} samples")
        for title, c in (("self", own), ("inclusive", incl)):
            print(f"  top {title}:")
            # inclusive: leave out the event loop and start-up frames every sample goes through
            rows = [(f, n) for f, n in c.most_common() if title == "self" or n / total < args.max_share]
            for f, n in rows[:args.top]:
                print(f"    {n / total:6.1%}  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
