"""The engine resolver (`mta.engines`) against a real `mta serve` on loopback.

Per user, in one run: the adapter-name call (first: the server builds the export; then
warm), a bare GET of the archive (no checks, nothing written: the anchor), a cold resolve
(fetch, sha256 + tar + config + safetensors checks, atomic write) and a warm one (re-hash
of the kept files, 304 without a body); then the bytes an engine keeps per served user
(the resolved PEFT folder, fp32 and bf16) against the user's stack blob in the registry.

``python -m bench.resolver [--users N]`` runs it alone; `python -m bench --only resolver`
as a section.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.http_load import build_registry
from bench.http_servers import READ_TOKEN, start_server
from bench.report import Section, print_section
from bench.timing import percentile
from mta.engines.adapter_cache import META_NAME, AdapterCache
from mta.engines.client import AdapterClient, FetchOptions


def _per_user(user_ids: list[str], fn: Callable[[str], Any]) -> list[float]:
    """Seconds ``fn(user_id)`` took, one value per user."""
    times = []
    for user_id in user_ids:
        start = time.perf_counter()
        fn(user_id)
        times.append(time.perf_counter() - start)
    return times


def _folder_bytes(folder: Path) -> int:
    """The PEFT files an engine reads (the resolver's own record left out)."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.name != META_NAME)


def _measure(base: str, root: Path, user_ids: list[str]) -> dict[str, Any]:
    """Time each step for every user and collect the bytes; one server, one run."""
    import httpx

    auth = {"Authorization": f"Bearer {READ_TOKEN}"}
    http = httpx.Client(base_url=base, headers=auth, timeout=120)
    names: dict[str, str] = {}

    def name_of(user_id: str) -> None:
        response = http.get(f"/v1/users/{user_id}/adapter-name")
        response.raise_for_status()
        names[user_id] = response.json()["name"]

    def bare_get(user_id: str) -> None:
        http.get(f"/v1/users/{user_id}/adapter").raise_for_status()

    cache = AdapterCache(root / "fp32", AdapterClient(base, READ_TOKEN), max_bytes=2**40)
    bf16 = AdapterCache(
        root / "bf16",
        AdapterClient(base, READ_TOKEN, options=FetchOptions(dtype="bf16")),
        max_bytes=2**40,
    )
    result: dict[str, Any] = {
        "name_cold": _per_user(user_ids, name_of),
        "name_warm": _per_user(user_ids, name_of),
        "bare_get": _per_user(user_ids, bare_get),
        "resolve_cold": _per_user(user_ids, lambda u: cache.resolve(names[u])),
    }
    cold_bytes = cache.client.stats.archive_bytes
    result["resolve_warm"] = _per_user(user_ids, lambda u: cache.resolve(names[u]))
    result["warm_body_bytes"] = cache.client.stats.archive_bytes - cold_bytes
    result["warm_not_modified"] = cache.client.stats.not_modified
    result["cold_body_bytes"] = cold_bytes
    for user_id in user_ids:
        bf16.resolve(names[user_id])
    result["folder_fp32"] = [_folder_bytes(cache.root / names[u]) for u in user_ids]
    result["folder_bf16"] = [_folder_bytes(bf16.root / names[u]) for u in user_ids]
    stacks = [http.get(f"/v1/users/{u}").json()["stack"] for u in user_ids]
    result["stack"] = [s["bytes"] for s in stacks]
    result["stack_dtype"] = stacks[0]["dtype"]
    http.close()
    return result


def _smollm2_bytes() -> dict[str, int]:
    """The same three sizes for SmolLM2-135M shapes: a served r17 folder vs an r1 fp16 stack.

    Serialized from random adapters of the real shapes (two rank-8 anchors fused by `cat`
    plus a rank-1 stack is rank 17), not served: the tiny model's headers dominate its sizes.
    """
    import torch

    from bench.shapes import SMOLLM2, random_adapter
    from mta.adapter_blob import adapter_to_bytes
    from mta.peft_io import save_peft_adapter

    shapes = SMOLLM2.linear_shapes()
    served = random_adapter(shapes, 17, seed=0, alpha=17)
    sizes = {"stack": len(adapter_to_bytes(random_adapter(shapes, 1, seed=1), dtype="fp16"))}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, torch_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            folder = save_peft_adapter(served, Path(tmp) / dtype, dtype=torch_dtype)
            sizes[dtype] = sum(f.stat().st_size for f in Path(folder).iterdir())
    return sizes


def _section(users: int, m: dict[str, Any]) -> Section:
    """The table: milliseconds per user (p50, p90) and bytes per served user, with ratios."""
    section = Section(
        f"Engine resolver against mta serve on loopback ({users} users, tiny Llama adapters)",
        ["measure", "p50", "p90", "unit", "ratio", "ratio over"],
    )

    def ms(key: str) -> tuple[float, float]:
        return percentile(m[key], 50) * 1000, percentile(m[key], 90) * 1000

    bare = ms("bare_get")[0]
    cold = ms("resolve_cold")[0]
    rows = [
        ("adapter-name, first call (server builds the export)", "name_cold", bare, "bare GET"),
        ("adapter-name, again (identity + archive in memory)", "name_warm", bare, "bare GET"),
        ("bare GET of the archive (no checks, not written)", "bare_get", bare, "bare GET"),
        ("resolve, cold (fetch + verify + atomic write)", "resolve_cold", bare, "bare GET"),
        ("resolve, warm (re-hash + 304, no body)", "resolve_warm", cold, "cold resolve"),
    ]
    for label, key, anchor, over in rows:
        p50, p90 = ms(key)
        section.add(label, p50, p90, "ms", p50 / anchor, over)
    stack = percentile(m["stack"], 50)
    kept_rows = [
        ("folder an engine keeps, fp32", "folder_fp32"),
        ("folder an engine keeps, bf16", "folder_bf16"),
        (f"stack blob in the registry ({m['stack_dtype']})", "stack"),
    ]
    for label, key in kept_rows:
        kept = percentile(m[key], 50)
        section.add(label, kept, percentile(m[key], 90), "bytes", kept / stack, "stack blob")
    smol = _smollm2_bytes()
    for label, key in (("fp32", "fp32"), ("bf16", "bf16"), ("stack blob r1 fp16", "stack")):
        name = f"SmolLM2-135M shapes: {label if key == 'stack' else f'folder r17 {label}'}"
        section.add(name, smol[key], smol[key], "bytes", smol[key] / smol["stack"], "its stack")
    section.notes.append(
        f"Body bytes received: {m['cold_body_bytes']:,} on the cold resolves, "
        f"{m['warm_body_bytes']:,} on the {users} warm ones ({m['warm_not_modified']} answered "
        "304)."
    )
    section.notes.append(
        "The SmolLM2-135M rows are serialized (our PEFT folder and stack blob formats) from "
        "random adapters of that model's shapes, not served; the tiny model's sizes are "
        "dominated by headers, these are not."
    )
    section.notes.append(
        "A served user's folder holds the whole exported adapter (the fused anchors plus the "
        "stack, rank Σ anchor ranks + stack rank), so it is larger than the stack the registry "
        "keeps per user; 'ratio' over the stack blob says by how much. Client, server and "
        "disk share this machine's cores; ratios compare steps of the same run."
    )
    return section


def run(users: int) -> Section:
    """Build a registry of ``users`` adapted users, serve it, measure, stop the server."""
    with tempfile.TemporaryDirectory(prefix="mta-bench-resolver-") as tmp:
        root = Path(tmp)
        where = build_registry(root / "registry", users=users, anchors=8, seed=0)
        process, base = start_server(where, root, memory_cache_mb=256)
        try:
            user_ids = [f"u{n:04d}" for n in range(users)]
            return _section(users, _measure(base, root / "resolver", user_ids))
        finally:
            process.terminate()
            process.wait(timeout=30)


def bench_resolver(quick: bool) -> Section:
    """The resolver as a `make bench` section (32 users; 8 quick)."""
    return run(8 if quick else 32)


def main(argv: list[str] | None = None) -> int:
    """Run the resolver benchmark alone and print its table."""
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    args = parser.parse_args(argv)
    print_section(run(args.users), Console(width=160))
    return 0


if __name__ == "__main__":
    sys.exit(main())
