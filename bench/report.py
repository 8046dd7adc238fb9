"""Result sections: printed as rich tables and written as markdown to docs/benchmarks.md."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class Section:
    """One benchmark's table plus the notes that say how to read it."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        """Append one row (cells are formatted when rendered)."""
        self.rows.append(list(row))


def fmt(value: Any) -> str:
    """Format a cell: floats to 3–4 significant digits, the rest as text."""
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_section(section: Section, console: Console) -> None:
    """Render a section as a rich table with its notes."""
    table = Table(title=section.title)
    for column in section.columns:
        table.add_column(column)
    for row in section.rows:
        table.add_row(*(fmt(v) for v in row))
    console.print(table)
    for note in section.notes:
        console.print(f"  {note}", style="dim")


def to_markdown(section: Section) -> str:
    """A section as a markdown heading, table and notes."""
    lines = [f"## {section.title}", ""]
    lines.append("| " + " | ".join(section.columns) + " |")
    lines.append("|" + "---|" * len(section.columns))
    for row in section.rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    lines.append("")
    lines.extend(f"- {note}" for note in section.notes)
    return "\n".join(lines).rstrip() + "\n"


def machine_description() -> str:
    """CPU model, core count, memory and library versions of this run."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def write_markdown(path: Path, header: str, sections: list[Section]) -> None:
    """Write the whole benchmark report."""
    body = [header.rstrip() + "\n"] + [to_markdown(s) for s in sections]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body))
