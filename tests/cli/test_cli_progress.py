"""The stderr progress adapter and the PEFT load snippet printed after an export."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta.cli.progress import StageProgress
from mta.cli.user import peft_snippet


def test_progress_logs_one_line_per_stage_start_and_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with StageProgress() as progress:  # stderr is captured, not a terminal: plain lines
        for done in range(1, 4):
            progress("embed", done, 3)
        for done in range(1, 11):
            progress("train", done, 10)
        progress("publish", 0, 0)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == "embed: started (3 steps)"
    assert lines[1].startswith("embed: 3/3 done in ")
    assert lines[2] == "train: started (10 steps)"
    assert lines[3].startswith("train: 10/10 done in ")
    assert lines[4] == "publish: started"
    assert len(lines) == 5


def test_disabled_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with StageProgress(enabled=False) as progress:
        progress("train", 1, 1)
    assert capsys.readouterr().err == ""


def test_peft_snippet_for_a_gguf_base_names_the_file(tmp_path: Path) -> None:
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    snippet = peft_snippet(tmp_path / "out", str(gguf))
    assert f"from_pretrained({str(tmp_path)!r}, gguf_file='model.Q4.gguf')" in snippet
    assert f"PeftModel.from_pretrained(base, {str(tmp_path / 'out')!r})" in snippet


def test_peft_snippet_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The printed lines are valid Python that loads an adapter onto the base model."""
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes, load_base_model
    from mta.peft_io import save_peft_adapter
    from tests.fixtures_model import random_adapter

    model, _ = load_base_model(str(tiny_model_dir))
    adapter = random_adapter(linear_shapes(model, DEFAULT_TARGET_MODULES), 2)
    out = save_peft_adapter(adapter, tmp_path / "adapter")
    lines = peft_snippet(out, str(tiny_model_dir)).splitlines()[1:]
    code = "\n".join(line.strip() for line in lines)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - executing the snippet is the point of the test
    assert type(namespace["model"]).__name__ == "PeftModelForCausalLM"
