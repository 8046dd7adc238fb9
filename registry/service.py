"""The registry service API: one import for the CLI, the HTTP server and the evaluation.

Functions are `verb_noun(ctx, *, ...)` and return frozen entities (registry.entities), never
ORM rows. They live in one module per noun (in the rooms `banks/`, `users/`, `jobs/`,
`publish/`, `maintenance/`) and are re-exported here, with the few helpers the apps need
beside them: the schema check and SQLite path of a database URL (`db`), user-id checks
(`names`), the request and identity values. The apps import this module, `context`,
`entities` and `errors`, and reach into no other registry module.
"""

from __future__ import annotations

from mta.registry.banks.build import build_bank, push_bank
from mta.registry.banks.versions import ProgressFn, get_bank, list_banks, set_alias
from mta.registry.db import check_schema, sqlite_path
from mta.registry.eval_runs import list_eval_runs, record_eval_run
from mta.registry.identity import (
    ENGINE_NAME_SEPARATOR,
    ENGINE_VERSION_CHARS,
    AdapterIdentity,
    engine_name,
    parse_engine_name,
)
from mta.registry.jobs.bulk import WorkSpec, read_id_file, run_local, select_users
from mta.registry.jobs.outcomes import BulkSummary, UserOutcome, summarize
from mta.registry.jobs.ray_runner import run_ray
from mta.registry.maintenance.fsck import fsck
from mta.registry.maintenance.gc import gc
from mta.registry.maintenance.init import init_registry
from mta.registry.maintenance.report import storage_report
from mta.registry.names import USER_ID_PATTERN, validate_user_id
from mta.registry.publish.request import PublishRequest
from mta.registry.publish.users import publish_users, watch_publish
from mta.registry.requests import AdaptRequest, FuseRequest, shot_indices
from mta.registry.users.adapt import adapt_user
from mta.registry.users.add_many import add_users, only_task_with_bank
from mta.registry.users.delete import delete_user, user_is_gone
from mta.registry.users.export import adapter_identity, export_user, materialize_fused
from mta.registry.users.recode import Recoded, recode_stack
from mta.registry.users.records import add_user, fuse_user, get_user, list_users

__all__ = [
    "Recoded",
    "recode_stack",
    "USER_ID_PATTERN",
    "AdaptRequest",
    "AdapterIdentity",
    "BulkSummary",
    "FuseRequest",
    "ProgressFn",
    "PublishRequest",
    "UserOutcome",
    "WorkSpec",
    "adapt_user",
    "adapter_identity",
    "add_user",
    "add_users",
    "build_bank",
    "check_schema",
    "delete_user",
    "ENGINE_NAME_SEPARATOR",
    "ENGINE_VERSION_CHARS",
    "engine_name",
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
    "only_task_with_bank",
    "parse_engine_name",
    "publish_users",
    "push_bank",
    "read_id_file",
    "record_eval_run",
    "run_local",
    "run_ray",
    "select_users",
    "set_alias",
    "shot_indices",
    "sqlite_path",
    "storage_report",
    "summarize",
    "user_is_gone",
    "validate_user_id",
    "watch_publish",
]
