"""Serving-engine integrations: clients of `mta serve` that load users' adapters on demand.

An engine-independent core (`names`, `client`, `archive_check`, `adapter_cache`) fetches a
versioned adapter name (``<user id>~<version>``) over HTTP, verifies it and keeps it in a
bounded folder cache; `vllm_resolver` is the thin vLLM LoRA resolver plugin on top of it.
This package talks to the registry only through the HTTP API: it imports the method core
(`mta`) and third-party libraries, never the registry, the server or the CLI.
"""
