"""``python -m bench [figure ...]``: run the benchmarks, print one line per figure, write JSON.

Figures: sync, sync_memory, catalogue, polling, install, scale, browse_polling, fleet (all by default, in that order). Each line
gives the measured value, the baseline measured in the same run, their ratio, the target
and whether it is met; bench/results/latest.json holds the same, one object per figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench.common import RESULTS_DIR, Figure

FIGURES = (
    "sync",
    "sync_memory",
    "catalogue",
    "polling",
    "install",
    "scale",
    "browse_polling",
    "fleet",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "figures",
        nargs="*",
        metavar="figure",
        help=f"subset to run, among {', '.join(FIGURES)} (default: all)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="timed runs per figure; the median is reported (default 5, minimum 5)",
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=20,
        help="seconds per wrk run of the polling figure (default 20)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR / "latest.json",
        help="where to write the JSON results (default bench/results/latest.json)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a target is not met or a figure cannot run",
    )
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error(
            "--runs must be at least 5 (each figure is a median of at least 5 runs)"
        )
    unknown = sorted(set(args.figures) - set(FIGURES))
    if unknown:
        parser.error(
            f"unknown figure(s) {', '.join(unknown)}; choose among {', '.join(FIGURES)}"
        )
    selected = (
        [f for f in FIGURES if f in args.figures] if args.figures else list(FIGURES)
    )

    figures: list[Figure] = []
    started = time.monotonic()
    for name in selected:
        module_started = time.monotonic()
        # Other work on the machine skews every figure: keep the load next to the numbers.
        load = os.getloadavg()[0]
        try:
            module = importlib.import_module(f"bench.{name}")
            produced = module.run(runs=args.runs, duration=args.duration)
        except Exception as exc:  # one broken figure must not stop the others
            traceback.print_exc(file=sys.stderr)
            produced = [Figure(name, "", "-", 0, status=f"error: {exc}")]
        for figure in produced:
            figure.extra["loadavg_1min_before"] = round(load, 2)
            print(figure.line(), flush=True)
        print(
            f"  ({name}: {time.monotonic() - module_started:.0f}s, load average before {load:.2f})",
            file=sys.stderr,
            flush=True,
        )
        figures.extend(produced)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps([f.to_json() for f in figures], indent=2) + "\n")
    print(
        f"wrote {args.output} ({time.monotonic() - started:.0f}s in all)",
        file=sys.stderr,
    )
    if args.strict and any(f.met is not True for f in figures):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
