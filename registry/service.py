"""The registry service API: one import for the CLI and the HTTP server.

Functions are `verb_noun(ctx, *, ...)` and return frozen entities (registry.entities), never
ORM rows. They live in one module per noun and are re-exported here.
"""

from __future__ import annotations

from mta.registry.banks.build import build_bank, push_bank
from mta.registry.banks.versions import ProgressFn, get_bank, list_banks, set_alias
from mta.registry.maintenance.gc import gc
from mta.registry.maintenance.storage import (
    fsck,
    init_registry,
    list_eval_runs,
    record_eval_run,
    storage_report,
)
from mta.registry.publish.users import publish_users, watch_publish
from mta.registry.users.adapt import adapt_user
from mta.registry.users.delete import delete_user, user_is_gone
from mta.registry.users.export import adapter_identity, export_user, materialize_fused
from mta.registry.users.records import (
    add_user,
    fuse_user,
    get_user,
    list_users,
    shot_indices,
)

__all__ = [
    "ProgressFn",
    "adapt_user",
    "adapter_identity",
    "add_user",
    "build_bank",
    "delete_user",
    "export_user",
    "fsck",
    "fuse_user",
    "gc",
    "get_bank",
    "get_user",
    "init_registry",
    "list_banks",
    "list_eval_runs",
    "list_users",
    "materialize_fused",
    "publish_users",
    "push_bank",
    "record_eval_run",
    "set_alias",
    "shot_indices",
    "storage_report",
    "user_is_gone",
    "watch_publish",
]
