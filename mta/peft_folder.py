"""Write a PEFT adapter folder atomically: aside first, then one rename into place."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mta.lora import LoraAdapter


def check_out_folder(out: Path, force: bool) -> None:
    """Refuse an output that is a file, or a non-empty folder without `force` (ValueError)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is not empty; pass --force to replace it")


def save_peft_folder_atomically(
    adapter: LoraAdapter,
    out: Path,
    *,
    dtype: torch.dtype,
    extra_json: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write `adapter` (plus `extra_json` files, name -> JSON value) as the PEFT folder `out`.

    A failure leaves `out` as it was; with `force` a non-empty `out` is replaced.
    """
    from mta.peft_io import save_peft_adapter

    out.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which makes 0700) so the result gets the usual permissions.
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_peft_adapter(adapter, tmp, dtype=dtype)
        for name, value in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
        check_out_folder(out, force)  # again: the folder may have been filled meanwhile
        old = None
        if out.is_dir():
            if any(out.iterdir()):
                old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
                out.rename(old)
            else:
                out.rmdir()
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
