"""The benchmark helpers: the shapes they assume and the statistics they print."""

from __future__ import annotations

import pytest

from bench.report import Section, to_markdown
from bench.shapes import SMOLLM2, random_adapter, tiny_llama_config
from bench.timing import percentile
from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes


def test_smollm2_shapes_match_a_real_model_built_from_its_config() -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(SMOLLM2))
    assert SMOLLM2.linear_shapes() == linear_shapes(model, DEFAULT_TARGET_MODULES)
    assert SMOLLM2.base_params() == sum(p.numel() for p in model.parameters())


def test_random_adapter_fits_the_shapes_it_is_given() -> None:
    shapes = {"model.layers.0.mlp.up_proj": (6, 4)}
    adapter = random_adapter(shapes, 2, seed=0)
    module = adapter.modules["model.layers.0.mlp.up_proj"]
    assert module.delta().shape == (6, 4)
    assert module.r == 2
    assert float(module.B.abs().sum()) > 0  # a trained adapter's B is not zero


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 2.5), (100, 4.0), (25, 1.75)])
def test_percentile_interpolates_linearly(q: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_markdown_table_has_one_cell_per_column() -> None:
    section = Section("t", ["a", "b"])
    section.add(1.23456, "x")
    lines = to_markdown(section).splitlines()
    assert lines[2] == "| a | b |"
    assert lines[4] == "| 1.235 | x |"


def test_registry_reads_phases_read_and_the_writer_commits(tmp_path) -> None:
    from bench.registry_reads import _phase, _seed

    path = tmp_path / "registry.db"
    _seed(f"sqlite:///{path}")
    for read_only in (False, True):
        phase = _phase(path, read_only, readers=2, seconds=0.5, writer=True)
        assert phase.reads and phase.waits  # both sides got through
        assert phase.rate == len(phase.reads) / 0.5
    alone = _phase(path, True, readers=1, seconds=0.2, writer=False)
    assert alone.reads and not alone.waits
