"""What one `mta publish` round asks for: one frozen value, validated once, read everywhere.

The selection (`task`, `user_ids`, `active_since`), the export options that fix the bytes and
so the names (`served_model_name`, `dtype`, `format`, `max_rank`) and the two bounds on the target
(`keep_previous`, `max_bytes`) travel together from the CLI flags to every round of
`publish_users` / `watch_publish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mta.dtypes import torch_dtype
from mta.registry.errors import InvalidInputError
from mta.registry.users.export import check_gguf_dtype

# The values vLLM accepts for --max-lora-rank (vllm/config/lora.py `MaxLoRARanks`).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Base-model aliases whose weights ship locally but which engines know by a hub id.
SERVED_NAMES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
DEFAULT_KEEP_PREVIOUS = 600.0  # seconds a replaced name stays loadable (in-flight requests)
# What a published folder holds: the PEFT files, or those plus llama.cpp's LoRA GGUF.
PUBLISH_FORMATS = ("peft", "gguf")


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that loads a rank-`rank` adapter.

    None above 512: no vLLM setting loads it; publish with `--max-rank 512` (or lower).
    """
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)


def default_served_name(base_model: str) -> str:
    """The name an engine serves a bank's base model under: an alias's hub id, else as recorded.

    A hub id stays as it is. A local path also stays: `vllm serve /models/x` serves the model
    under that path unless `--served-model-name` says otherwise, so pass the same name here.
    """
    return SERVED_NAMES.get(base_model.lower(), base_model)


@dataclass(frozen=True)
class PublishRequest:
    """One publish round's selection, export options and bounds.

    Attributes:
        task: publish only this task's users (default: every user).
        user_ids: publish only these users (each must exist and have a recipe); with
            `active_since` the union of both.
        active_since: seconds; also select users whose current adapter was made this
            recently (the stack's creation, else the recipe's: the registry records no fetches).
        served_model_name: written as `base_model_name_or_path` (vLLM's filesystem resolver
            loads a folder only when it equals the model vLLM was started with); default per
            user: the bank's base model, an alias as its hub id (`default_served_name`).
        dtype: tensor precision of the published folders ("fp16", "bf16", "fp32").
        format: "peft" (vLLM, LoRAX, PEFT), or "gguf": the PEFT files plus
            `adapter_model.gguf` for llama.cpp (fp16 or fp32); part of the name.
        max_rank: compress every adapter to this rank (engines with `--max-lora-rank`).
        keep_previous: seconds a user's replaced name stays published, so requests in flight
            on it finish; removed by the first round after that.
        max_bytes: bound on the current folders' bytes; past it the oldest are evicted.
    """

    task: str | None = None
    user_ids: tuple[str, ...] | None = None
    active_since: float | None = None
    served_model_name: str | None = None
    dtype: str = "fp16"
    format: str = "peft"
    max_rank: int | None = None
    keep_previous: float = DEFAULT_KEEP_PREVIOUS
    max_bytes: int | None = None

    def validate(self) -> PublishRequest:
        """Return self, or raise InvalidInputError naming the first bad field.

        Checked before any work: a round where nothing changed would never export, and so
        never find a bad option by itself.
        """
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise InvalidInputError("served model name is empty")
        torch_dtype(self.dtype)  # an unknown name fails here, listing the valid ones
        if self.format not in PUBLISH_FORMATS:
            raise InvalidInputError(
                f"unknown publish format {self.format!r}; valid: {', '.join(PUBLISH_FORMATS)}"
            )
        check_gguf_dtype(self.format == "gguf", self.dtype)
        if self.max_rank is not None and self.max_rank < 1:
            raise InvalidInputError(f"max_rank must be at least 1, got {self.max_rank}")
        if not 0 <= self.keep_previous < float("inf"):
            raise InvalidInputError(
                f"keep_previous must be 0 or more seconds, got {self.keep_previous}"
            )
        if self.active_since is not None and not 0 < self.active_since < float("inf"):
            raise InvalidInputError(f"active_since must be positive, got {self.active_since}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise InvalidInputError(f"max_bytes must be at least 1, got {self.max_bytes}")
        return self

    @property
    def explicit(self) -> bool:
        """Whether users were named (then a bad one is an error, not a warning)."""
        return self.user_ids is not None

    @property
    def selects_all(self) -> bool:
        """Whether the round publishes every user (of `task`)."""
        return self.user_ids is None and self.active_since is None

    def served_name(self, base_model: str) -> str:
        """What `base_model_name_or_path` says for a user of a bank on `base_model`."""
        return self.served_model_name or default_served_name(base_model)

    def export_options(self, base_model: str) -> dict[str, Any]:
        """The `export_user` / `AdapterIdentity.digest` / `engine_name` keyword options."""
        return {
            "max_rank": self.max_rank,
            "dtype": self.dtype,
            "base_model_name": self.served_name(base_model),
            "gguf": self.format == "gguf",
        }
