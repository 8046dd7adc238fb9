"""The prepared GPU check runs end to end (here on the CPU, the tiny model, two users)."""

from __future__ import annotations

from bench.batched import measure


def test_the_batched_section_measures_every_pass_size(tiny_model_dir) -> None:
    section = measure(str(tiny_model_dir), [1, 2], {1: 2, 2: 2})
    assert [row[0] for row in section.rows] == ["1", "2"]
    assert section.rows[0][4] == "1.00"  # B = 1 is the run's own baseline
    assert all(float(row[2]) > 0 for row in section.rows)
    assert "cpu" in section.title
