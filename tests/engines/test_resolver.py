"""The resolver core and its vLLM class against a real `mta serve` process on loopback.

One registry (SQLite + file store, the four-anchor bank of the tiny Llama, a few fused
users) and one server serve the whole module; each test resolves its own users into its
own cache folder. vLLM itself is not installed here (its wheel needs CUDA): the vLLM class
is run against a stand-in of the names it imports (`vllm.lora.resolver.LoRAResolver`,
`LoRAResolverRegistry` and `vllm.lora.request.LoRARequest`), written from vLLM's source.
"""

from __future__ import annotations

import abc
import asyncio
import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mta.engines.adapter_cache import META_NAME, TMP_DIR, AdapterCache
from mta.engines.client import AdapterClient, FetchOptions
from mta.engines.errors import ArchiveError
from tests.server.prom import parse_metrics, value
from tests.support import TASK, movie_user, push_folders, write_anchor_bank

READ_TOKEN = "resolver-read-token-0123456789"
ADMIN_TOKEN = "resolver-admin-token-0123456789"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "gone@example.org")
ADAPTER_ROUTE = "/v1/users/{user_id}/adapter"


@dataclass(frozen=True)
class Served:
    """The module's registry and the `mta serve` process over it."""

    base_url: str
    db_url: str
    store_url: str
    cache_dir: Path

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {READ_TOKEN}", **kwargs.pop("headers", {})}
        return httpx.get(self.base_url + path, headers=headers, timeout=60, **kwargs)

    def metrics(self) -> dict[Any, float]:
        return parse_metrics(self.get("/metrics").text)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(process: subprocess.Popen, base: str) -> None:
    for _ in range(1200):  # bounded: imports take seconds
        assert process.poll() is None, "mta serve exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            threading.Event().wait(0.05)
    pytest.fail("mta serve never became healthy")


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_shapes: dict[str, tuple[int, int]],
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,
) -> Iterator[Served]:
    """A registry with fused users, served by a real `mta serve` subprocess."""
    from mta.registry import service
    from mta.registry.context import RegistryContext

    root = tmp_path_factory.mktemp("resolver-registry")
    db_url, store_url, cache_dir = RegistryContext.folder_locations(root)
    dirs, profiles = write_anchor_bank(root / "anchors", tiny_shapes)
    with RegistryContext.open(db_url, store_url, cache_dir) as ctx:
        service.init_registry(ctx)
        push_folders(ctx, dirs, profiles, tiny_model_dir, tiny_embedder_dir)
        for seed, user_id in enumerate(USERS):
            service.add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6, seed))
            service.fuse_user(ctx, user_id)
    port = _free_port()
    argv = [
        sys.executable, "-m", "mta.cli.app", "--db", db_url, "--store", store_url,
        "--cache-dir", str(cache_dir), "serve", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "MTA_READ_TOKEN": READ_TOKEN, "MTA_ADMIN_TOKEN": ADMIN_TOKEN}
    process = subprocess.Popen(argv, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, base)
        yield Served(base, db_url, store_url, cache_dir)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _cache(served: Served, root: Path, max_bytes: int = 2**30, **client: Any) -> AdapterCache:
    return AdapterCache(
        root, AdapterClient(served.base_url, READ_TOKEN, **client), max_bytes=max_bytes
    )


def _name(served: Served, user_id: str, **params: Any) -> str:
    response = served.get(f"/v1/users/{user_id}/adapter-name", params=params)
    assert response.status_code == 200, response.text
    return response.json()["name"]


def _fetches(served: Served) -> float:
    """Adapter-route requests the server answered with a 200 so far."""
    labels = {"route": ADAPTER_ROUTE, "method": "GET", "status": "200"}
    return value(served.metrics(), "mta_http_requests_total", **labels)


def _archive_files(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cold_fetch_writes_a_verified_peft_folder_and_a_warm_one_gets_no_body(
    served: Served, tmp_path: Path
) -> None:
    from mta.peft_io import load_peft_adapter

    cache = _cache(served, tmp_path / "cache")
    name = _name(served, "alice")
    folder = cache.resolve(name)
    assert folder == tmp_path / "cache" / "fp32" / name
    files = sorted(p.name for p in folder.iterdir())
    assert files == [META_NAME, "adapter_config.json", "adapter_model.safetensors"]
    archive = _archive_files(served.get("/v1/users/alice/adapter").content)
    assert {n: (folder / n).read_bytes() for n in archive} == archive
    assert all(_mode(folder / f) == 0o644 for f in files)
    assert _mode(folder) == _mode(folder.parent) == 0o755
    assert load_peft_adapter(folder).ranks()  # a PEFT folder the method core loads

    served_bytes = value(served.metrics(), "mta_adapter_bytes_served_total")
    not_modified = value(served.metrics(), "mta_adapter_cache_total", result="not_modified")
    assert cache.resolve(name) == folder
    assert cache.client.stats.archives == 1 and cache.client.stats.not_modified == 1
    # A second cache over the same folder (a restarted engine) revalidates too: no body.
    again = _cache(served, tmp_path / "cache")
    assert again.resolve(name) == folder and again.client.stats.archives == 0
    samples = served.metrics()
    assert value(samples, "mta_adapter_bytes_served_total") == served_bytes
    assert value(samples, "mta_adapter_cache_total", result="not_modified") == not_modified + 2

    # A damaged kept file is not revalidated but fetched again, and repaired.
    (folder / "adapter_model.safetensors").write_bytes(b"damaged")
    assert cache.resolve(name) == folder and cache.client.stats.archives == 2
    weights = "adapter_model.safetensors"
    assert (folder / weights).read_bytes() == archive[weights]


def test_a_new_adapter_is_a_new_name_and_the_old_name_resolves_to_none(
    served: Served, tmp_path: Path
) -> None:
    from mta.registry import service
    from mta.registry.context import RegistryContext

    cache = _cache(served, tmp_path / "cache")
    old = _name(served, "bob")
    old_folder = cache.resolve(old)
    assert old_folder is not None
    with RegistryContext.open(served.db_url, served.store_url, served.cache_dir) as ctx:
        service.adapt_user(ctx, "bob", service.AdaptRequest(shots=2, max_steps=1))
    new = _name(served, "bob")
    assert new != old and new.startswith("bob~")
    assert cache.resolve(old) is None  # stale: the server answers 410, never other bytes
    gone = served.get(f"/v1/users/bob/adapter?version={old.rpartition('~')[2]}")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "stale_version"
    assert "\n" not in gone.text and gone.headers["x-mta-adapter-name"] == new
    new_folder = cache.resolve(new)
    assert new_folder is not None and new_folder != old_folder
    old_weights = (old_folder / "adapter_model.safetensors").read_bytes()
    assert (new_folder / "adapter_model.safetensors").read_bytes() != old_weights
    assert old_folder.is_dir()  # left to eviction: an engine may still read it


def test_the_byte_bound_evicts_the_least_recently_resolved(served: Served, tmp_path: Path) -> None:
    names = [_name(served, user) for user in ("carol", "dave", "erin")]
    probe = _cache(served, tmp_path / "probe")
    size = sum(f.stat().st_size for f in probe.resolve(names[0]).iterdir())
    cache = _cache(served, tmp_path / "cache", max_bytes=2 * size + size // 2)
    folders = [cache.resolve(names[0]), cache.resolve(names[1])]
    threading.Event().wait(0.01)
    assert cache.resolve(names[0]) == folders[0]  # carol used again: dave is the oldest now
    threading.Event().wait(0.01)
    third = cache.resolve(names[2])
    assert third is not None and third.is_dir() and folders[0].is_dir()
    assert not folders[1].exists()
    assert cache.total_bytes() <= cache.max_bytes
    assert not any((cache.root / TMP_DIR).iterdir())
    # Evicted is not lost: resolving the name again fetches it again.
    assert cache.resolve(names[1]) == folders[1] and folders[1].is_dir()


class _Corrupting(httpx.BaseTransport):
    """Forwards to the real server and flips one byte in the middle of each 200 body."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if response.status_code != 200:
            return response
        body = bytearray(response.read())
        body[len(body) // 2] ^= 0xFF
        return httpx.Response(200, headers=response.headers, content=bytes(body))


def test_a_corrupted_archive_is_refused_and_nothing_is_kept(served: Served, tmp_path: Path) -> None:
    name = _name(served, "frank")
    broken = _cache(served, tmp_path / "cache", transport=_Corrupting())
    with pytest.raises(ArchiveError, match="sha256"):
        broken.resolve(name)
    assert not (broken.root / name).exists()
    assert not any((broken.root / TMP_DIR).glob("*"))
    assert _cache(served, tmp_path / "cache").resolve(name) == broken.root / name


def test_concurrent_resolves_of_one_name_fetch_it_once(served: Served, tmp_path: Path) -> None:
    name = _name(served, "erin", dtype="fp16")
    cache = _cache(served, tmp_path / "cache", options=FetchOptions(dtype="fp16"))
    before = _fetches(served)
    start = threading.Barrier(8)
    results: list[Path | None] = []

    def resolve() -> None:
        start.wait()
        results.append(cache.resolve(name))

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [tmp_path / "cache" / "fp16" / name] * 8
    assert cache.client.stats.requests == 1 and _fetches(served) == before + 1


def test_a_deleted_user_resolves_to_none_and_their_folder_goes(
    served: Served, tmp_path: Path
) -> None:
    cache = _cache(served, tmp_path / "cache")
    name = _name(served, "gone@example.org")
    folder = cache.resolve(name)
    assert folder is not None and folder.name == name
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deleted = httpx.delete(f"{served.base_url}/v1/users/gone@example.org", headers=admin)
    assert deleted.status_code == 200, deleted.text
    assert cache.resolve(name) is None and not folder.exists()


def test_names_that_are_not_versioned_adapter_names_make_no_request(
    served: Served, tmp_path: Path
) -> None:
    cache = _cache(served, tmp_path / "cache")
    for name in (
        "gpt-4",
        "alice",
        "alice~3F2A9C01B7DE",
        "../x~0123456789ab",
        ".~0123456789ab",
        "alice@0123456789ab",
    ):
        assert cache.resolve(name) is None
    assert cache.client.stats.requests == 0
    assert cache.resolve("nobody~0123456789ab") is None  # a 404 from the server


# --- the vLLM class, against a stand-in of the vLLM names it uses ------------------------------


@pytest.fixture
def vllm_stand_in(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """`vllm.lora.resolver` and `vllm.lora.request` as vLLM defines the names we use."""

    class LoRAResolver(abc.ABC):
        @abc.abstractmethod
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any: ...

    class _LoRAResolverRegistry:
        def __init__(self) -> None:
            self.resolvers: dict[str, LoRAResolver] = {}

        def register_resolver(self, resolver_name: str, resolver: LoRAResolver) -> None:
            self.resolvers[resolver_name] = resolver

    @dataclass
    class LoRARequest:
        lora_name: str
        lora_int_id: int
        lora_path: str = ""

    registry = _LoRAResolverRegistry()
    modules = {
        "vllm": types.ModuleType("vllm"),
        "vllm.lora": types.ModuleType("vllm.lora"),
        "vllm.lora.resolver": types.ModuleType("vllm.lora.resolver"),
        "vllm.lora.request": types.ModuleType("vllm.lora.request"),
    }
    modules["vllm.lora.resolver"].LoRAResolver = LoRAResolver
    modules["vllm.lora.resolver"].LoRAResolverRegistry = registry
    modules["vllm.lora.request"].LoRARequest = LoRARequest
    for module_name, module in modules.items():
        monkeypatch.setitem(sys.modules, module_name, module)
    return types.SimpleNamespace(
        LoRAResolver=LoRAResolver, LoRARequest=LoRARequest, registry=registry
    )


def test_the_vllm_plugin_registers_and_resolves_through_the_entry_point(
    served: Served, tmp_path: Path, vllm_stand_in: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import entry_points

    for variable in ("MTA_SERVE_URL", "MTA_RESOLVER_MAX_RANK"):
        monkeypatch.delenv(variable, raising=False)
    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "mta_resolver"]
    register = plugin.load()
    register()  # no MTA_SERVE_URL: nothing registered
    assert vllm_stand_in.registry.resolvers == {}

    monkeypatch.setenv("MTA_SERVE_URL", served.base_url)
    monkeypatch.setenv("MTA_SERVE_TOKEN", READ_TOKEN)
    monkeypatch.setenv("MTA_RESOLVER_CACHE_DIR", str(tmp_path / "loras"))
    monkeypatch.setenv("MTA_RESOLVER_CACHE_BYTES", str(2**30))
    monkeypatch.setenv("MTA_RESOLVER_DTYPE", "bf16")
    register()
    resolver = vllm_stand_in.registry.resolvers["mta"]
    assert isinstance(resolver, vllm_stand_in.LoRAResolver)

    name = _name(served, "alice", dtype="bf16")
    request = asyncio.run(resolver.resolve_lora("some/base-model", name))
    assert isinstance(request, vllm_stand_in.LoRARequest) and request.lora_name == name
    assert request.lora_path == str(tmp_path / "loras" / "bf16" / name)
    assert request.lora_int_id > 0
    assert (Path(request.lora_path) / "adapter_config.json").is_file()
    stale = name.rpartition("~")[0] + "~" + ("0" * 12 if not name.endswith("0" * 12) else "1" * 12)
    assert asyncio.run(resolver.resolve_lora("some/base-model", stale)) is None
    assert asyncio.run(resolver.resolve_lora("some/base-model", "not-ours")) is None


def test_the_vllm_class_answers_none_when_the_server_is_down(
    tmp_path: Path, vllm_stand_in: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from mta.engines.vllm_resolver import resolver_class

    client = AdapterClient(f"http://127.0.0.1:{_free_port()}", READ_TOKEN, timeout=5)
    cache = AdapterCache(tmp_path / "loras", client, max_bytes=2**20)
    resolver = resolver_class(vllm_stand_in.LoRAResolver, vllm_stand_in.LoRARequest)(cache)
    with caplog.at_level("WARNING", logger="mta.engines.vllm"):
        assert asyncio.run(resolver.resolve_lora("base", "alice~0123456789ab")) is None
    assert "alice~0123456789ab not loaded: cannot fetch" in caplog.text
