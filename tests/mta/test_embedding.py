"""Embedder resolution and user embeddings; the MiniLM checks are slow tests."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from mta.embedding import (
    DEFAULT_EMBEDDER,
    Embedder,
    normalize_rows,
    resolve_embedder,
    user_embedding,
)
from mta.lamp_data import load_user, load_users
from mta.tasks import get_task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


class TableEmbedder(Embedder):
    """An embedder whose vectors come from a fixed table (exercises the averaging math)."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.name = "table"
        self.table = table

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        return normalize_rows(np.array([self.table[t] for t in texts]))


def test_default_resolves_to_the_bundled_weights_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTA_EMBEDDER", raising=False)
    name, location, local_only = resolve_embedder()
    assert name == DEFAULT_EMBEDDER
    assert local_only and (Path(location) / "config.json").is_file()
    assert resolve_embedder("sentence-transformers/all-MiniLM-L6-v2")[1] == location


def test_env_and_explicit_specs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MTA_EMBEDDER", "BAAI/bge-small-en-v1.5")
    assert resolve_embedder() == ("BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", False)
    assert Embedder().name == "BAAI/bge-small-en-v1.5"  # nothing loads until encode
    assert resolve_embedder(str(tmp_path)) == (str(tmp_path), str(tmp_path.resolve()), True)


def test_user_embedding_is_the_renormalized_mean_of_unit_item_vectors() -> None:
    # Item lengths differ 10x; after normalization each item weighs the same.
    embedder = TableEmbedder({"a": [10.0, 0.0], "b": [0.0, 1.0]})
    vector = user_embedding(embedder, ["a", "b"])
    assert vector.dtype == np.float32
    np.testing.assert_allclose(vector, [2**-0.5, 2**-0.5], rtol=1e-6)
    # Repeating the history does not change the user.
    np.testing.assert_allclose(user_embedding(embedder, ["a", "b"] * 5), vector, rtol=1e-6)


def test_user_embedding_needs_a_history() -> None:
    with pytest.raises(ValueError, match="empty history"):
        user_embedding(TableEmbedder({}), [])


def test_encode_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        Embedder().encode("one text")


@pytest.mark.slow
def test_minilm_vectors_are_unit_float32_and_the_model_is_shared() -> None:
    first, second = Embedder(), Embedder()
    vectors = first.encode(["a cat sleeps on the sofa", "a kitten naps on the couch", "tax law"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert second.model is first.model
    assert first.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_minilm_places_the_new_sci_fi_user_next_to_the_sci_fi_fan() -> None:
    task = get_task("movie_tagging")
    embedder = Embedder()
    users = load_users(EXAMPLES / "movie_tagging_demo.json")
    matrix = np.stack(
        [user_embedding(embedder, [task.item_text(i) for i in u["profile"]]) for u in users]
    )
    newcomer = load_user(EXAMPLES / "new_user.json")
    vector = user_embedding(embedder, [task.item_text(i) for i in newcomer["profile"]])
    nearest = users[int(np.argmax(matrix @ vector))]["user_id"]
    assert nearest == "demo-02-ben"


@pytest.mark.slow
def test_loading_minilm_prints_no_progress_bar_on_stderr() -> None:
    # Our CLI draws its own progress; transformers' "Loading weights" bars would interleave.
    import subprocess
    import sys

    code = "from mta.embedding import Embedder; print(Embedder().encode(['a film']).shape)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "(1, 384)"
    assert "Loading weights" not in done.stderr and "it/s" not in done.stderr
