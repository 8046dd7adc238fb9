"""Bounded HTTP load test of `mta serve` on loopback: concurrent adapter fetches.

Builds a throwaway registry (tiny random Llama, a bank of random rank-8 anchors,
``--users`` users each with a fused recipe and a one-step rank-1 stack), starts the
server as a subprocess on 127.0.0.1, and runs ``--clients`` concurrent clients that
fetch random users' adapters for ``--seconds`` per phase:

* ``full``: ``GET /v1/users/{id}/adapter`` (the first fetch of a user builds the
  export, later ones come from the server's in-memory archive cache);
* ``revalidate``: the same with ``If-None-Match`` set to the ETag seen before (304).

It prints a markdown table (p50/p99 latency, requests/s, errors, cache hit ratio)
and exits 1 if any request failed. Run: ``python -m bench.http_load --seconds 30``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # never anything else: this is a loopback benchmark
TASK = "movie_tagging"
READ_TOKEN = "bench-read-token-0123456789"
ADMIN_TOKEN = "bench-admin-token-0123456789"
_WORDS = (
    "space", "crew", "robot", "planet", "war", "love", "city", "detective", "secret",
    "family", "island", "king", "time", "future", "past", "dream", "ghost", "school",
    "music", "heist", "prison", "river", "storm", "village", "doctor",
)  # fmt: skip


@dataclass
class PhaseResult:
    """What one phase of the load measured."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    bytes: int = 0
    cache: dict[str, float] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        """The q-th percentile latency in ms (nearest rank)."""
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]

    @property
    def requests(self) -> int:
        """Requests completed (successes and errors)."""
        return len(self.latencies_ms) + self.errors

    def hit_ratio(self) -> float:
        """Archive-cache hits over hits + misses in this phase (304s not counted)."""
        hits, misses = self.cache.get("hit", 0.0), self.cache.get("miss", 0.0)
        return hits / (hits + misses) if hits + misses else float("nan")


def _movie_user(user_id: str, items: int, rng: random.Random) -> dict[str, Any]:
    from mta.tasks.movie_tagging import MOVIE_TAGS

    liked = rng.sample(MOVIE_TAGS, 2)
    profile = [
        {
            "id": f"{user_id}-{i}",
            "tag": rng.choice(liked),
            "description": " ".join(rng.choice(_WORDS) for _ in range(12)),
        }
        for i in range(items)
    ]
    return {"user_id": user_id, "profile": profile}


def build_registry(root: Path, users: int, anchors: int, seed: int) -> dict[str, str]:
    """Create the registry the server will serve; return its locations and the user ids."""
    import torch

    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes, load_base_model
    from mta.lora import LoraAdapter, LoraModule
    from mta.peft_io import save_peft_adapter
    from mta.registry import service
    from mta.registry.context import RegistryContext
    from mta.tiny import make_tiny_embedder, make_tiny_llama

    rng = random.Random(seed)
    model_dir = make_tiny_llama(root / "tiny-llama", seed=seed)
    shapes = linear_shapes(load_base_model(str(model_dir))[0], DEFAULT_TARGET_MODULES)
    generator = torch.Generator().manual_seed(seed)
    anchor_dirs = []
    for i in range(anchors):
        modules = {
            path: LoraModule(
                A=torch.randn(8, fan_in, generator=generator) * 0.05,
                B=torch.randn(fan_out, 8, generator=generator) * 0.05,
                scale=2.0,
            )
            for path, (fan_out, fan_in) in shapes.items()
        }
        anchor_dirs.append(save_peft_adapter(LoraAdapter(modules), root / "anchors" / f"a{i}"))
    profiles = root / "anchor_profiles.json"
    profiles.write_text(json.dumps([_movie_user(f"a{i}", 10, rng) for i in range(anchors)]))
    where = {
        "db": f"sqlite:///{root / 'registry.db'}",
        "store": f"file://{root / 'store'}",
        "cache": str(root / "cache"),
    }
    with RegistryContext.open(where["db"], where["store"], where["cache"]) as ctx:
        service.init_registry(ctx)
        service.push_bank(
            ctx,
            task=TASK,
            adapter_dirs=anchor_dirs,
            profiles_path=profiles,
            base_model=str(model_dir),
            embedder=str(make_tiny_embedder(root / "embedder", seed)),
        )
        for n in range(users):
            user_id = f"u{n:04d}"
            service.add_user(ctx, user_id=user_id, task=TASK, profile=_movie_user(user_id, 8, rng))
            service.adapt_user(ctx, user_id, shots=4, rank=1, epochs=1, max_steps=1)
            if (n + 1) % 25 == 0:
                print(f"  {n + 1}/{users} users with stacks", file=sys.stderr, flush=True)
    return where


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(where: dict[str, str], root: Path, memory_cache_mb: int) -> tuple[Any, str]:
    """Start `mta serve` in a subprocess and wait (bounded) until /healthz answers."""
    import httpx

    tokens = root / "tokens.json"
    tokens.write_text(json.dumps({"read": [READ_TOKEN], "admin": [ADMIN_TOKEN]}))
    port = _free_port()
    argv = [
        sys.executable, "-m", "mta.cli.serve", "--host", HOST, "--port", str(port),
        "--db", where["db"], "--store", where["store"], "--cache-dir", where["cache"],
        "--tokens-file", str(tokens), "--memory-cache-mb", str(memory_cache_mb),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MTA_READ_TOKEN", "MTA_ADMIN_TOKEN")}
    process = subprocess.Popen(argv, env=env)
    base = f"http://{HOST}:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"mta serve exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("mta serve did not become healthy within 60 s")


def _cache_counters(base: str) -> dict[str, float]:
    import httpx

    text = httpx.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {READ_TOKEN}"}, timeout=10
    ).text
    counters = {}
    for line in text.splitlines():
        if line.startswith("mta_adapter_cache_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            counters[result] = float(line.rsplit(" ", 1)[1])
    return counters


async def _run_phase(
    base: str,
    name: str,
    user_ids: list[str],
    clients: int,
    seconds: float,
    etags: dict[str, str],
    seed: int,
) -> PhaseResult:
    import httpx

    result = PhaseResult(name)
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.perf_counter() + seconds
    expected = 304 if name == "revalidate" else 200

    async def worker(client: httpx.AsyncClient, worker_rng: random.Random) -> None:
        while time.perf_counter() < deadline:
            user_id = worker_rng.choice(user_ids)
            extra = {"If-None-Match": etags[user_id]} if expected == 304 else {}
            start = time.perf_counter()
            try:
                response = await client.get(f"/v1/users/{user_id}/adapter", headers=extra)
            except httpx.HTTPError:
                result.errors += 1
                continue
            elapsed = (time.perf_counter() - start) * 1e3
            if response.status_code != expected:
                result.errors += 1
                continue
            result.latencies_ms.append(elapsed)
            result.bytes += len(response.content)
            if expected == 200:
                etags[user_id] = response.headers["etag"]

    before = _cache_counters(base)
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=60
    ) as client:
        await asyncio.gather(
            *(worker(client, random.Random(seed * 1000 + i)) for i in range(clients))
        )
    result.seconds = time.perf_counter() - started
    after = _cache_counters(base)
    result.cache = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return result


def _collect_etags(base: str, user_ids: list[str], etags: dict[str, str]) -> None:
    """Fetch every user's ETag not seen yet, so each conditional request can match."""
    import httpx

    auth = {"Authorization": f"Bearer {READ_TOKEN}"}
    for user_id in user_ids:
        if user_id not in etags:
            url = f"{base}/v1/users/{user_id}/adapter"
            etags[user_id] = httpx.get(url, headers=auth, timeout=60).headers["etag"]


def markdown_table(results: list[PhaseResult], clients: int, users: int) -> str:
    """The results as a markdown table."""
    lines = [
        f"| phase ({clients} clients, {users} users) | requests | req/s | p50 ms | p99 ms | "
        "errors | archive-cache hit ratio | MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = r.hit_ratio()
        lines.append(
            f"| {r.name} | {r.requests} | {r.requests / r.seconds:.0f} | "
            f"{r.percentile(50):.1f} | {r.percentile(99):.1f} | {r.errors} | "
            f"{'–' if ratio != ratio else f'{ratio:.3f}'} | {r.bytes / r.seconds / 1e6:.1f} |"
        )
    return "\n".join(lines)


def run_load(
    *,
    users: int,
    anchors: int,
    clients: int,
    seconds: float,
    phases: list[str],
    memory_cache_mb: int = 256,
    seed: int = 0,
    work_dir: Path | None = None,
) -> list[PhaseResult]:
    """Build a registry, start `mta serve` on loopback, run the phases, stop the server."""
    with tempfile.TemporaryDirectory(prefix="mta-http-load-") as tmp:
        root = work_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        print(f"building a registry of {users} users in {root}", file=sys.stderr)
        started = time.perf_counter()
        where = build_registry(root, users, anchors, seed)
        print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        process, base = start_server(where, root, memory_cache_mb)
        try:
            user_ids = [f"u{n:04d}" for n in range(users)]
            etags: dict[str, str] = {}
            results = []
            for phase in phases:
                if phase == "revalidate":
                    _collect_etags(base, user_ids, etags)
                print(f"phase {phase}: {clients} clients for {seconds:g} s", file=sys.stderr)
                results.append(
                    asyncio.run(_run_phase(base, phase, user_ids, clients, seconds, etags, seed))
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
    return results


def bench_http(quick: bool) -> Any:
    """The load test as a `make bench` section (32 clients; 30 s per phase, 5 s quick)."""
    from bench.report import Section

    users, seconds = (40, 5.0) if quick else (200, 30.0)
    results = run_load(
        users=users, anchors=8, clients=32, seconds=seconds, phases=["full", "revalidate"]
    )
    section = Section(
        f"HTTP adapter fetches on loopback (mta serve, 32 clients, {users} users, "
        f"{seconds:g} s per phase)",
        ["phase", "requests", "req/s", "p50 ms", "p99 ms", "errors", "cache hit ratio"],
    )
    for r in results:
        section.add(
            r.name,
            r.requests,
            r.requests / r.seconds,
            r.percentile(50),
            r.percentile(99),
            r.errors,
            r.hit_ratio(),
        )
    section.notes.append(
        "Tiny random Llama adapters (the cost is the registry lookup + archive, not the "
        "model); client and server share this machine's cores. 'revalidate' sends "
        "If-None-Match and gets 304s."
    )
    return section


def main(argv: list[str] | None = None) -> int:
    """Run the load test; the exit code is 1 when any request failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--anchors", type=int, default=8)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase")
    parser.add_argument("--phases", default="full,revalidate")
    parser.add_argument("--memory-cache-mb", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp folder")
    args = parser.parse_args(argv)
    if args.users < 1 or args.clients < 1 or not 0 < args.seconds <= 600:
        parser.error("--users and --clients must be >= 1 and --seconds in (0, 600]")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or set(phases) - {"full", "revalidate"}:
        parser.error("--phases is a comma list of: full, revalidate")

    results = run_load(
        users=args.users,
        anchors=args.anchors,
        clients=args.clients,
        seconds=args.seconds,
        phases=phases,
        memory_cache_mb=args.memory_cache_mb,
        seed=args.seed,
        work_dir=args.work_dir,
    )
    print(markdown_table(results, args.clients, args.users))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
