"""Time to personalize a new user: MTA (fuse + in-memory stack) vs the paper's pipeline shape.

The paper's public pipeline folds the fused LoRA into the base weights, saves the full merged
model, reloads it and trains a rank-4 LoRA on it. MTA fuses in memory, adds the fused delta to
the weights in memory (restored afterwards) and trains a rank-1 stack; only the stack is written.
Both use the same examples, steps, batch size and learning rate.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from bench.report import Section
from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes, load_base_model
from mta.fusion import fuse
from mta.peft_io import adapter_to_bytes, save_peft_adapter
from mta.tasks import get_task, profile_examples
from mta.training import TrainConfig, apply_adapter, train_lora

DEMO_DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "movie_tagging_demo.json"


def _examples(count: int) -> list[tuple[str, str]]:
    user = json.loads(DEMO_DATA.read_text())[0]
    return profile_examples(get_task("movie_tagging"), user["profile"])[:count]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _anchors(shapes: dict[str, tuple[int, int]], n: int):
    from bench.shapes import random_adapter

    return [random_adapter(shapes, 8, seed=i) for i in range(n)]


def bench_personalize(quick: bool) -> Section:
    """Seconds and bytes written to personalize one user on SmolLM2, MTA vs the paper's shape."""
    steps = 2 if quick else 4
    batch = 2
    examples = _examples(steps * batch)
    model, tokenizer = load_base_model()
    shapes = linear_shapes(model, DEFAULT_TARGET_MODULES)
    anchors = _anchors(shapes, 2)
    weights = [0.6, 0.4]
    section = Section(
        f"Time to personalize a new user (SmolLM2, {steps} steps of batch {batch})",
        [
            "pipeline",
            "fuse s",
            "prepare s",
            "train s",
            "save s",
            "total s",
            "bytes written",
            "paper / MTA time",
        ],
    )
    # One untimed step first: the first backward pass pays allocator and kernel warm-up.
    warmup = TrainConfig(rank=1, epochs=1, batch_size=batch, max_steps=1)
    train_lora(model, tokenizer, examples[:batch], warmup, progress=False)
    with tempfile.TemporaryDirectory(prefix="mta-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        fused = fuse(anchors, weights, method="cat")
        t_fuse = time.perf_counter() - t0
        config = TrainConfig(rank=1, epochs=1, batch_size=batch, lr=1e-3, max_length=256)
        t0 = time.perf_counter()
        stack, _ = train_lora(model, tokenizer, examples, config, frozen=fused, progress=False)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        blob = adapter_to_bytes(stack, dtype=torch.float16)
        (root / "stack.safetensors").write_bytes(blob)
        t_save = time.perf_counter() - t0
        mta_total = t_fuse + t_train + t_save
        mta_row = ["MTA (in-memory stack, r1)", t_fuse, 0.0, t_train, t_save, mta_total, len(blob)]

        t0 = time.perf_counter()
        fused_p = fuse(anchors, weights, method="cat")
        t_fuse_p = time.perf_counter() - t0
        t0 = time.perf_counter()
        merged_dir = root / "merged"
        with apply_adapter(model, fused_p):
            model.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        merged_model, merged_tok = _reload(merged_dir)
        t_prepare = time.perf_counter() - t0
        paper_config = TrainConfig(rank=4, epochs=1, batch_size=batch, lr=1e-3, max_length=256)
        t0 = time.perf_counter()
        lora, _ = train_lora(merged_model, merged_tok, examples, paper_config, progress=False)
        t_train_p = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = save_peft_adapter(lora, root / "paper-lora", dtype=torch.float32)
        t_save_p = time.perf_counter() - t0
        written = _folder_bytes(merged_dir) + _folder_bytes(Path(out))
        paper_total = t_fuse_p + t_prepare + t_train_p + t_save_p
        section.add(*mta_row, paper_total / mta_total)
        section.add(
            "paper shape (merge, save, reload, r4)",
            t_fuse_p,
            t_prepare,
            t_train_p,
            t_save_p,
            paper_total,
            written,
            1.0,
        )
    section.notes.append(
        f"{len(examples)} leave-one-out examples of one demo user; the base model is already in "
        "memory for both; 'prepare' is fold + save_pretrained + reload of the merged model. "
        "Bytes written: MTA's fp16 stack blob vs the merged model folder + the fp32 rank-4 LoRA."
    )
    return section


def _reload(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return model, tokenizer
