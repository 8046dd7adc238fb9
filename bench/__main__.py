"""`python -m bench [--quick] [--only NAMES] [--out docs/benchmarks.md]`: run and report."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from bench.report import Section, machine_description, print_section, write_markdown

ROOT = Path(__file__).resolve().parents[1]


def _sections() -> dict[str, Callable[[bool], Section]]:
    from bench.batched import bench_batched
    from bench.bulk import bench_bulk
    from bench.bytes_per_user import bench_bytes
    from bench.contention import bench_contention
    from bench.fusion import bench_fusion
    from bench.http_load import bench_http
    from bench.lookup import bench_lookup
    from bench.materialize import bench_materialize
    from bench.merge import bench_merge
    from bench.personalize import bench_personalize
    from bench.registry_reads import bench_registry_reads
    from bench.resolver import bench_resolver

    return {
        "fusion": bench_fusion,
        "personalize": bench_personalize,
        "bytes": bench_bytes,
        "lookup": bench_lookup,
        "materialize": bench_materialize,
        "http": bench_http,
        "bulk": bench_bulk,
        "contention": bench_contention,
        "batched": bench_batched,
        "reads": bench_registry_reads,
        "resolver": bench_resolver,
        "merge": bench_merge,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print their tables and write the markdown report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short mode (< 3 minutes)")
    parser.add_argument("--only", default="", help="comma-separated subset of sections")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown report (default: docs/benchmarks.md for a full run; none with --only, "
        "whose sections would replace the whole report)",
    )
    args = parser.parse_args(argv)
    available = _sections()
    names = [n for n in args.only.split(",") if n] or list(available)
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(available)}")
    console = Console(width=160)
    sections: list[Section] = []
    start = time.perf_counter()
    for name in names:
        console.print(f"[bold]== {name}[/bold]", highlight=False)
        t0 = time.perf_counter()
        section = available[name](args.quick)
        section.notes.append(f"section wall time {time.perf_counter() - t0:.1f} s")
        print_section(section, console)
        sections.append(section)
    mode = "quick" if args.quick else "default"
    command = "make bench-quick" if args.quick else "make bench"
    if args.only:
        command = f"python -m bench {'--quick ' if args.quick else ''}--only {args.only}"
    header = (
        "# Benchmarks\n\n"
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {mode} mode with "
        f"`{command}` (total {time.perf_counter() - start:.0f} s) on: {machine_description()}.\n\n"
        "Every ratio compares two things measured in the same run on the same machine; absolute "
        "seconds on these shared 2-core machines are noisy, ratios less so.\n"
    )
    out = args.out or (None if args.only else ROOT / "docs" / "benchmarks.md")
    if out is None:
        console.print("not written: --only runs print their sections; pass --out FILE to save")
        return 0
    write_markdown(out, header, sections)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
