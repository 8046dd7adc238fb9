"""The vLLM LoRA resolver plugin: a request for model ``<user id>~<version>`` loads that adapter.

vLLM (read, not run here: it needs CUDA) calls ``await resolver.resolve_lora(base_model_name,
lora_name)`` the first time a request names an unknown model, when
``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` is true, then ``add_lora`` with the returned
``LoRARequest`` and keeps it under that name for good (``vllm/entrypoints/openai/
serving_models.py``). A versioned name therefore fits: the same name always means the same
bytes, and a new adapter is a new name. vLLM replaces ``lora_int_id`` with its own counter.

`register` is the ``vllm.general_plugins`` entry point (``VLLM_PLUGINS=mta_resolver``). vLLM
calls it in each of its processes; it only reads the settings (`settings.py`) and registers
the resolver under `RESOLVER_NAME`; no request is made before the first resolve. vLLM is
imported inside `register` only, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

from mta.errors import one_line

from .adapter_cache import AdapterCache
from .errors import ResolverError
from .settings import URL_ENV, ResolverSettings

RESOLVER_NAME = "mta"
log = logging.getLogger("mta.engines.vllm")


def lora_int_id(lora_name: str) -> int:
    """A stable positive 31-bit id for a name (vLLM's resolve path replaces it with its own)."""
    return int(hashlib.sha256(lora_name.encode()).hexdigest()[:8], 16) % (2**31 - 1) + 1


def resolver_class(resolver_base: type, request_type: type) -> type:
    """The resolver class on vLLM's ``LoRAResolver``, building ``LoRARequest`` values.

    Both are parameters so the class is defined only once vLLM is imported (in `register`)
    and can be tested against stand-ins of the two names.
    """

    class MtaLoRAResolver(resolver_base):  # type: ignore[misc, valid-type]
        """Resolves ``<user id>~<version>`` through an `AdapterCache` fed by `mta serve`."""

        def __init__(self, cache: AdapterCache) -> None:
            self.cache = cache

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            """The ``LoRARequest`` of a current adapter name, else None (stale, unknown, down).

            The fetch runs on a worker thread, so the event loop keeps serving meanwhile.
            ``base_model_name`` is not compared with the adapter's config: the registry
            serves each user's adapter for the base model of their bank.
            """
            try:
                folder = await asyncio.to_thread(self.cache.resolve, lora_name)
            except ResolverError as error:
                log.warning("mta resolver: %s not loaded: %s", lora_name, one_line(error))
                return None
            if folder is None:
                return None
            return request_type(
                lora_name=lora_name, lora_int_id=lora_int_id(lora_name), lora_path=str(folder)
            )

    return MtaLoRAResolver


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the resolver when configured.

    Raises:
        ResolverConfigError: a resolver variable is set to an unusable value (vLLM then
            fails to start, rather than serve without the resolver).
    """
    settings = ResolverSettings.from_env(os.environ)
    if settings is None:
        log.info("mta resolver: %s is not set; not registered", URL_ENV)
        return
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    resolver = resolver_class(LoRAResolver, LoRARequest)(settings.open_cache())
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
    log.info("mta resolver: adapters from %s, cached in %s", settings.url, settings.cache_dir)
