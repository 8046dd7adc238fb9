"""Tables on a pipe print whole: rich would otherwise shrink them to 80 columns."""

from __future__ import annotations

from mta.cli.output import Output


def test_a_wide_table_on_a_pipe_keeps_every_number(capsys):
    columns = ["real user", *[f"method-{n}" for n in range(12)]]
    rows = [["8000243", *[f"0.{n:03d}" for n in range(12)]]]
    Output(json_mode=False).table(columns, rows, title="per real user")
    out = capsys.readouterr().out
    assert "…" not in out
    assert all(f"0.{n:03d}" in out and f"method-{n}" in out for n in range(12))
