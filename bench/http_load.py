"""Bounded HTTP load test of `mta serve` on loopback, against the same bytes as static files.

Builds a throwaway registry (tiny random Llama, a bank of random rank-8 anchors,
``--users`` users each with a fused recipe and a one-step rank-1 stack), starts the
server as a subprocess on 127.0.0.1, and runs ``--clients`` concurrent clients:

* ``cold``: every user's adapter fetched once (each builds its export); the archives
  are then written as ``<user>.tar`` files for the static anchor;
* ``full``: ``GET /v1/users/{id}/adapter`` of random users for ``--seconds`` (warm:
  answered from the server's in-memory archive cache);
* ``revalidate``: the same with ``If-None-Match`` set to the ETag seen before (304);
* ``static`` / ``static-revalidate``: the anchor. The same archive files, same clients,
  served by a bare FastAPI ``StaticFiles`` app under uvicorn in its own process: what
  this stack on this machine does with no registry, auth or metrics in the way.

It prints a markdown table (p50/p99 latency, requests/s and its ratio to the static
phase, errors, cache hit ratio) and exits 1 if any request failed.
Run: ``python -m bench.http_load --seconds 30``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.http_client import Connection
from bench.http_servers import READ_TOKEN, start_server, start_static_server

TASK = "movie_tagging"
PHASES = ("cold", "full", "static", "revalidate", "static-revalidate")
# Each mta phase and the static phase it is measured against.
ANCHOR_OF = {"full": "static", "revalidate": "static-revalidate"}
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
    db, store, cache = RegistryContext.folder_locations(root)
    where = {"db": db, "store": store, "cache": str(cache)}
    with RegistryContext.in_folder(root) as ctx:
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
            service.adapt_user(
                ctx, user_id, service.AdaptRequest(shots=4, rank=1, epochs=1, max_steps=1)
            )
            if (n + 1) % 25 == 0:
                print(f"  {n + 1}/{users} users with stacks", file=sys.stderr, flush=True)
    return where


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


@dataclass
class Target:
    """A server the phases fetch archives from, and the ETags it has sent."""

    base: str
    path: str  # with "{user_id}"
    etags: dict[str, str] = field(default_factory=dict)
    archives: dict[str, bytes] = field(default_factory=dict)  # kept by the cold phase


async def _run_phase(
    target: Target, name: str, user_ids: list[str], clients: int, seconds: float, seed: int
) -> PhaseResult:
    """Fetch random users' archives for ``seconds`` (``cold``: each user once)."""
    result = PhaseResult(name)
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}  # sent to the static server too
    deadline = time.perf_counter() + seconds
    conditional = name.endswith("revalidate")
    pending = list(user_ids) if name == "cold" else None

    def next_user(rng: random.Random) -> str | None:
        if pending is not None:
            return pending.pop() if pending else None
        return rng.choice(user_ids) if time.perf_counter() < deadline else None

    async def worker(rng: random.Random) -> None:
        connection = Connection(target.base, headers)
        while (user_id := next_user(rng)) is not None:
            extra = {"If-None-Match": target.etags[user_id]} if conditional else {}
            start = time.perf_counter()
            try:
                path = target.path.format(user_id=user_id)
                status, fields, body = await asyncio.wait_for(connection.get(path, extra), 60)
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                connection.close()
                result.errors += 1
                continue
            elapsed = (time.perf_counter() - start) * 1e3
            if status != (304 if conditional else 200):
                result.errors += 1
                continue
            result.latencies_ms.append(elapsed)
            result.bytes += len(body)
            if not conditional:
                target.etags[user_id] = fields["etag"]
            if pending is not None:
                target.archives[user_id] = body
        connection.close()

    is_mta = not name.startswith("static")
    before = _cache_counters(target.base) if is_mta else {}
    started = time.perf_counter()
    await asyncio.gather(*(worker(random.Random(seed * 1000 + i)) for i in range(clients)))
    result.seconds = time.perf_counter() - started
    after = _cache_counters(target.base) if is_mta else {}
    result.cache = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return result


def _collect(target: Target, user_ids: list[str]) -> None:
    """Fetch every user's archive and ETag not seen yet (so conditional requests match)."""
    import httpx

    auth = {"Authorization": f"Bearer {READ_TOKEN}"}
    for user_id in user_ids:
        if user_id not in target.etags or user_id not in target.archives:
            url = target.base + target.path.format(user_id=user_id)
            response = httpx.get(url, headers=auth, timeout=60)
            target.etags[user_id] = response.headers["etag"]
            target.archives[user_id] = response.content


def anchor_ratio(result: PhaseResult, results: list[PhaseResult]) -> float:
    """An mta phase's req/s over its static anchor's in the same run (NaN without one)."""
    anchor = next((r for r in results if r.name == ANCHOR_OF.get(result.name)), None)
    if anchor is None or not anchor.requests or not result.requests:
        return float("nan")
    return (result.requests / result.seconds) / (anchor.requests / anchor.seconds)


def markdown_table(results: list[PhaseResult], clients: int, users: int) -> str:
    """The results as a markdown table."""
    lines = [
        f"| phase ({clients} clients, {users} users) | requests | req/s | × static | p50 ms | "
        "p99 ms | p99/p50 | errors | archive-cache hit ratio | MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio, anchor = r.hit_ratio(), anchor_ratio(r, results)
        lines.append(
            f"| {r.name} | {r.requests} | {r.requests / r.seconds:.0f} | "
            f"{'–' if anchor != anchor else f'{anchor:.2f}'} | "
            f"{r.percentile(50):.1f} | {r.percentile(99):.1f} | "
            f"{r.percentile(99) / r.percentile(50):.1f} | {r.errors} | "
            f"{'–' if ratio != ratio else f'{ratio:.3f}'} | {r.bytes / r.seconds / 1e6:.1f} |"
        )
    return "\n".join(lines)


def _registry(root: Path, users: int, anchors: int, seed: int) -> dict[str, str]:
    """The registry under ``root``: the one a previous run left there, else a new one."""
    recorded = root / "where.json"
    if recorded.exists():
        print(f"reusing the registry in {root}", file=sys.stderr)
        return json.loads(recorded.read_text())
    print(f"building a registry of {users} users in {root}", file=sys.stderr)
    started = time.perf_counter()
    where = build_registry(root, users, anchors, seed)
    print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    recorded.write_text(json.dumps(where))
    return where


def _run_phases(
    root: Path, mta: Target, user_ids: list[str], phases: list[str], clients: int, **run: Any
) -> list[PhaseResult]:
    """Run the phases in order; the static server starts once the archives are known."""
    static: Target | None = None
    static_process = None
    results = []
    try:
        for phase in phases:
            if phase.startswith("static") and static is None:
                _collect(mta, user_ids)  # the bytes the static server will serve
                folder = root / "static"
                folder.mkdir(exist_ok=True)
                for user_id, data in mta.archives.items():
                    (folder / f"{user_id}.tar").write_bytes(data)
                static_process, base = start_static_server(folder)
                static = Target(base, "/{user_id}.tar")
            target = static if phase.startswith("static") else mta
            assert target is not None
            if phase.endswith("revalidate"):
                _collect(target, user_ids)
            print(f"phase {phase}: {clients} clients", file=sys.stderr)
            results.append(asyncio.run(_run_phase(target, phase, user_ids, clients, **run)))
    finally:
        if static_process is not None:
            static_process.terminate()
            static_process.wait(timeout=30)
    return results


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
    """Build (or reuse) a registry, start `mta serve` on loopback, run the phases, stop it."""
    with tempfile.TemporaryDirectory(prefix="mta-http-load-") as tmp:
        root = work_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        where = _registry(root, users, anchors, seed)
        process, base = start_server(where, root, memory_cache_mb)
        try:
            mta = Target(base, "/v1/users/{user_id}/adapter")
            user_ids = [f"u{n:04d}" for n in range(users)]
            return _run_phases(root, mta, user_ids, phases, clients, seconds=seconds, seed=seed)
        finally:
            process.terminate()
            process.wait(timeout=30)


def bench_http(quick: bool) -> Any:
    """The load test as a `make bench` section (32 clients; 30 s per phase, 5 s quick)."""
    from bench.report import Section

    users, seconds = (40, 5.0) if quick else (200, 30.0)
    results = run_load(users=users, anchors=8, clients=32, seconds=seconds, phases=list(PHASES))
    section = Section(
        f"HTTP adapter fetches on loopback (mta serve, 32 clients, {users} users, "
        f"{seconds:g} s per phase)",
        ["phase", "requests", "req/s", "× static", "p50 ms", "p99 ms", "errors", "hit ratio"],
    )
    for r in results:
        section.add(
            r.name,
            r.requests,
            r.requests / r.seconds,
            anchor_ratio(r, results),
            r.percentile(50),
            r.percentile(99),
            r.errors,
            r.hit_ratio(),
        )
    section.notes.append(
        "Tiny random Llama adapters (the cost is the registry lookup + archive, not the "
        "model); client and server share this machine's cores. 'cold' fetches each user "
        "once (builds the export); 'full' and 'revalidate' (If-None-Match, 304) are warm. "
        "'static*' serve the same archive bytes as files (FastAPI StaticFiles under uvicorn, "
        "no auth) to the same clients in the same run; '× static' is req/s over that anchor."
    )
    return section


def main(argv: list[str] | None = None) -> int:
    """Run the load test; the exit code is 1 when any request failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--anchors", type=int, default=8)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--memory-cache-mb", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="default: a temp folder; reused if built"
    )
    args = parser.parse_args(argv)
    if args.users < 1 or args.clients < 1 or not 0 < args.seconds <= 600:
        parser.error("--users and --clients must be >= 1 and --seconds in (0, 600]")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or set(phases) - set(PHASES):
        parser.error(f"--phases is a comma list of: {', '.join(PHASES)}")

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
