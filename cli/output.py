"""One output object for every command: rich for people, JSON for machines.

Data goes to stdout; errors, warnings and progress go to stderr so `--json`
output stays parseable. Every value is printed as plain `Text`, never parsed as rich
markup or emoji codes: ids, paths and error texts come from users and may hold `[/x]`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

_stdout = Console(soft_wrap=True)
_stderr = Console(stderr=True, soft_wrap=True)


def _print_whole(table: Table) -> None:
    """Print a table; piped, at its full width rather than the 80 columns rich assumes.

    Piped output has no screen to fit, and a cell shrunk to "0.…" would lose its number.
    """
    if _stdout.is_terminal:
        _stdout.print(table)
        return
    unbounded = _stdout.options.update(max_width=100_000)
    wanted = Measurement.get(_stdout, unbounded, table).maximum
    width = _stdout.width
    _stdout.width = max(width, wanted)
    try:
        _stdout.print(table)
    finally:
        _stdout.width = width


def _snake(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


class Output:
    """Renders tables, records and results either as rich text or as JSON."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode

    def emit_json(self, data: Any) -> None:
        """Write one JSON document to stdout."""
        sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")
        sys.stdout.flush()

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str | None = None,
    ) -> None:
        """Render rows as a table, or as a JSON list keyed by the snake-cased column names."""
        rows = [list(r) for r in rows]
        if self.json_mode:
            keys = [_snake(c) for c in columns]
            self.emit_json([dict(zip(keys, r, strict=True)) for r in rows])
            return
        table = Table(title=_plain(title))
        for column in columns:
            table.add_column(_plain(column))
        for row in rows:
            table.add_row(*(Text("" if v is None else str(v)) for v in row))
        _print_whole(table)

    def record(self, data: Mapping[str, Any], *, title: str | None = None) -> None:
        """Render one mapping as a two-column table, or as a JSON object."""
        if self.json_mode:
            self.emit_json(dict(data))
            return
        table = Table(title=_plain(title), show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in data.items():
            table.add_row(Text(str(key)), Text(_render_value(value)))
        _stdout.print(table)

    def result(self, message: str, **data: Any) -> None:
        """Report the outcome of a command: a message for people, the data for machines."""
        if self.json_mode:
            self.emit_json(data or {"message": message})
            return
        _stdout.print(Text(message))


def _plain(text: str | None) -> Text | None:
    """A title or header as literal text (None stays None: no title)."""
    return None if text is None else Text(text)


def _render_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=_jsonable)
    return "" if value is None else str(value)


def error(message: str) -> None:
    """Print a one-line error to stderr."""
    _stderr.print(Text.assemble(("Error:", "red"), " ", message), highlight=False)


def warning(message: str) -> None:
    """Print a warning to stderr."""
    _stderr.print(Text.assemble(("Warning:", "yellow"), " ", message), highlight=False)


def log(message: str) -> None:
    """Print a progress or info line to stderr."""
    _stderr.print(Text(message), highlight=False)


def stderr_console() -> Console:
    """The console that progress bars draw on (stderr)."""
    return _stderr
