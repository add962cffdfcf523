"""Summarise py-spy ``--format raw`` (collapsed stack) files: where the time goes.

``python -m bench.profile FILE...`` prints, per file set, the frames with the most
self time and the refgate frames (``app/``) with the most inclusive time, as
``function (file:line)`` with the share of samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path}:{m['line']})"


def _is_app(frame: str) -> bool:
    """A frame in refgate's own package (py-spy prints paths relative to sys.path)."""
    m = _FRAME.match(frame.strip())
    return m is not None and (m["file"].startswith("app/") or "/app/" in m["file"])


def _frame_func(frame: str) -> str:
    """A frame without its line number (inclusive time is per function)."""
    m = _FRAME.match(frame.strip())
    return f"{m['func']} ({m['file']})" if m else frame.strip()


def summarize(files: Iterable[Path], top: int = 15) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    app_lines: Counter[str] = Counter()
    total = 0
    for f in files:
        for line in f.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [x for x in stack.split(";") if x]
            # py-spy's raw format lists the root first: the last frame is the leaf
            self_time[_short(frames[-1])] += n
            seen = set()
            for fr in frames:
                key = _frame_func(fr)
                if key in seen:
                    continue
                seen.add(key)
                if _is_app(fr):
                    inclusive[_short(fr).rsplit(":", 1)[0] + ")"] += n
            leaf_app = next((fr for fr in reversed(frames) if _is_app(fr)), None)
            if leaf_app is not None:
                app_lines[_short(leaf_app)] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples"]
    out.append("\nself time (leaf frame):")
    out += [f"  {n / total:6.1%}  {k}" for k, n in self_time.most_common(top)]
    out.append("\nrefgate functions, inclusive time:")
    out += [f"  {n / total:6.1%}  {k}" for k, n in inclusive.most_common(top)]
    out.append("\nrefgate lines on the stack when sampled (innermost app/ frame):")
    out += [f"  {n / total:6.1%}  {k}" for k, n in app_lines.most_common(top)]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    print(summarize(args.files, args.top), end="")


if __name__ == "__main__":
    main()
