"""Time to personalize a new user: MTA (fuse + in-memory stack) vs the paper's pipeline shape.

The paper's public pipeline folds the fused LoRA into the base weights, saves the full merged
model, reloads it and trains a rank-4 LoRA on it. MTA fuses in memory, adds the fused delta to
the weights in memory (restored afterwards) and trains a rank-1 stack; only the stack is written.
Both use the same examples, steps, batch size and learning rate.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.report import Section
from bench.shapes import random_adapter
from mta.adapter_blob import adapter_to_bytes
from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes, load_base_model
from mta.fusion import fuse
from mta.inference import apply_adapter
from mta.peft_io import save_peft_adapter
from mta.tasks import get_task, profile_examples
from mta.training import TrainConfig, train_lora

DEMO_DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "movie_tagging_demo.json"


def _examples(count: int) -> list[tuple[str, str]]:
    user = json.loads(DEMO_DATA.read_text())[0]
    return profile_examples(get_task("movie_tagging"), user["profile"])[:count]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _anchors(shapes: dict[str, tuple[int, int]], n: int):
    return [random_adapter(shapes, 8, seed=i) for i in range(n)]


def bench_personalize(quick: bool) -> Section:
    """Seconds and bytes written to personalize one user on SmolLM2, MTA vs the paper's shape."""
    steps = 2 if quick else 4
    repeats = 1 if quick else 3
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
    runs: dict[str, list[list[float]]] = {"mta": [], "paper": []}
    written = {"mta": 0, "paper": 0}
    with tempfile.TemporaryDirectory(prefix="mta-bench-") as tmp:
        # Alternate the order so neither pipeline always runs on a warmer machine.
        for rep in range(repeats):
            order = ("mta", "paper") if rep % 2 == 0 else ("paper", "mta")
            for name in order:
                root = Path(tmp) / f"{name}{rep}"
                root.mkdir()
                pipeline = _mta_pipeline if name == "mta" else _paper_pipeline
                times, nbytes = pipeline(model, tokenizer, anchors, weights, examples, batch, root)
                runs[name].append(times)
                written[name] = nbytes
    mta_t = [statistics.median(col) for col in zip(*runs["mta"], strict=True)]
    paper_t = [statistics.median(col) for col in zip(*runs["paper"], strict=True)]
    section.add("MTA (in-memory stack, r1)", *mta_t, written["mta"], paper_t[-1] / mta_t[-1])
    section.add("paper shape (merge, save, reload, r4)", *paper_t, written["paper"], 1.0)
    section.notes.append(
        f"median of {repeats} alternating runs; {len(examples)} leave-one-out examples of one "
        "demo user; the base model is already in memory for both; 'prepare' is fold + "
        "save_pretrained + reload of the merged model. "
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


def _mta_pipeline(model, tokenizer, anchors, weights, examples, batch, root: Path):
    """Fuse in memory, train a rank-1 stack over the merged-in-memory fused delta, save it."""
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
    return [t_fuse, 0.0, t_train, t_save, t_fuse + t_train + t_save], len(blob)


def _paper_pipeline(model, tokenizer, anchors, weights, examples, batch, root: Path):
    """Fold the fused LoRA into the weights, save and reload the full model, train a rank-4."""
    t0 = time.perf_counter()
    fused = fuse(anchors, weights, method="cat")
    t_fuse = time.perf_counter() - t0
    t0 = time.perf_counter()
    merged_dir = root / "merged"
    with apply_adapter(model, fused):
        model.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    merged_model, merged_tok = _reload(merged_dir)
    t_prepare = time.perf_counter() - t0
    config = TrainConfig(rank=4, epochs=1, batch_size=batch, lr=1e-3, max_length=256)
    t0 = time.perf_counter()
    lora, _ = train_lora(merged_model, merged_tok, examples, config, progress=False)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = save_peft_adapter(lora, root / "paper-lora", dtype=torch.float32)
    t_save = time.perf_counter() - t0
    total = t_fuse + t_prepare + t_train + t_save
    return [t_fuse, t_prepare, t_train, t_save, total], _folder_bytes(merged_dir) + _folder_bytes(
        Path(out)
    )
