"""`mta init`, `mta storage report`, `mta gc` and `mta fsck`: the registry and its bytes."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mta.cli.errors import EXIT_INTEGRITY
from mta.cli.options import JsonOpt, at_most, registry_context
from mta.cli.output import Output

# A duration over a century is a typo, and overflows the date arithmetic of `gc`.
MAX_SECONDS = 100 * 365 * 24 * 3600

storage_app = typer.Typer(
    help="Where the bytes go: report, garbage-collect, verify.",
    no_args_is_help=True,
)


def storage_init(
    ctx: typer.Context,
    json_mode: JsonOpt = False,
) -> None:
    """Create the registry database (migrated to the latest schema) and the blob store.

    Safe to run again: it only applies missing migrations.

    Example:

        mta init
        mta --db postgresql+psycopg://u:p@host/db --store s3://bucket/mta init
    """
    from mta.registry.service import init_registry

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        info = init_registry(registry)
        where = {"db_url": registry.db_url, "store_url": registry.store_url}
    info = {**where, **info}
    if json_mode:
        out.emit_json(info)
        return
    out.result(f"registry ready: {info['db_url']}  store: {info['store_url']}")


@storage_app.command("report")
def storage_report(
    ctx: typer.Context,
    json_mode: JsonOpt = False,
) -> None:
    """Bytes by kind and per user, compared with storing one rank-8 LoRA per user (OPPU).

    Example:

        mta storage report --json
    """
    from mta.registry.service import storage_report as build_report

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        report = build_report(registry)
    if json_mode:
        out.emit_json(report)
        return
    render_report(out, report)


def render_report(out: Output, report: dict[str, Any]) -> None:
    """The storage report as two tables: bytes by kind, then the per-user comparison."""
    by_kind: dict[str, Any] = report.get("by_kind") or {}
    out.table(
        ["Kind", "Bytes", "Size"],
        ([kind, size, human_bytes(size)] for kind, size in by_kind.items()),
        title="Stored bytes by kind (cache is derived, not counted in the total)",
    )
    per_user = report.get("per_user_bytes") or {}
    summary = {
        "total (persistent)": human_bytes(report.get("total_bytes")),
        "banks": report.get("banks"),
        "users": report.get("users"),
        "stacks (stale)": f"{report.get('stacks')} ({report.get('stale_stacks')})",
        "current stacks by format": _formats(report),
        "per user mean / p50 / p99": " / ".join(
            human_bytes(per_user.get(q)) for q in ("mean", "p50", "p99")
        ),
        "one LoRA per user (OPPU) would be": (
            f"{human_bytes(report.get('oppu_equivalent_bytes'))} "
            f"(rank {report.get('oppu_rank')}, {report.get('oppu_dtype')})"
        ),
        "ratio vs OPPU (total)": _ratio(report.get("ratio_vs_oppu")),
        "ratio vs OPPU (per-user bytes only)": _ratio(report.get("ratio_per_user_vs_oppu")),
    }
    out.record(summary, title="Storage report")


def _formats(report: dict[str, Any]) -> str:
    """`fp16 3, nf4 200 (default nf4)`: users' current stacks by storage format."""
    counts = report.get("current_stack_formats") or {}
    listed = ", ".join(f"{fmt} {n}" for fmt, n in counts.items()) or "none"
    return f"{listed} (default {report.get('default_stack_format')})"


def _ratio(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a (no users)"


def human_bytes(value: Any) -> str:
    """Format a byte count as 1.3 MB (decimal units); non-numbers become 'n/a'."""
    if not isinstance(value, (int, float)):
        return "n/a"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def storage_gc(
    ctx: typer.Context,
    grace: Annotated[
        int,
        typer.Option(
            "--grace",
            min=0,
            callback=at_most(MAX_SECONDS),
            help="Keep unreferenced blobs younger than this many seconds (writes in flight).",
        ),
    ] = 3600,
    retain_superseded: Annotated[
        int,
        typer.Option(
            "--retain-superseded",
            min=0,
            callback=at_most(MAX_SECONDS),
            help="Keep stacks and recipes that are no longer served this many seconds "
            "(default 7 days) for rollback.",
        ),
    ] = 7 * 24 * 3600,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")
    ] = False,
    json_mode: JsonOpt = False,
) -> None:
    """Reclaim what nothing serves: interrupted deletions, superseded stacks, cache, blobs.

    Finishes user deletions a crash interrupted, deletes stacks and recipes superseded
    longer than --retain-superseded ago, removes export-cache entries of deleted users
    (and damaged ones), then blobs no registry row references.

    Example:

        mta gc --dry-run
        mta gc --grace 0 --retain-superseded 0
    """
    from mta.registry.service import gc

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        result = gc(
            registry,
            grace_seconds=grace,
            retain_superseded_seconds=retain_superseded,
            dry_run=dry_run,
        ).to_dict()
    verb = "would delete" if dry_run else "deleted"
    out.result(
        f"gc: {verb} {len(result['deleted'])} blob(s), {human_bytes(result['bytes_freed'])}, "
        f"{result['superseded_stacks']} superseded stack(s), "
        f"{result['superseded_recipes']} recipe(s), "
        f"{result['cache_entries_removed']} cache entr(ies); "
        f"{result['kept_in_grace']} unreferenced blob(s) kept within the grace period",
        **result,
    )


def storage_fsck(
    ctx: typer.Context,
    json_mode: JsonOpt = False,
) -> None:
    """Verify the registry against the store: every row has its blob and every blob its digest.

    Exits 3 when a row points at a missing or corrupted blob. Unreferenced blobs are
    reported but are not errors (`mta gc` reclaims them).

    Example:

        mta fsck --json
    """
    from mta.registry.service import fsck

    out = Output(json_mode)
    with registry_context(ctx) as registry:
        report = fsck(registry)
    data = report.to_dict()
    if json_mode:
        out.emit_json(data)
    else:
        _render_fsck(out, data)
    if not report.ok:
        raise typer.Exit(EXIT_INTEGRITY)


def _render_fsck(out: Output, data: dict[str, Any]) -> None:
    """Problems as a table, then a one-line summary."""
    problems = [*data["missing"], *data["corrupt"]]
    if problems:
        out.table(
            ["Table", "Row", "Column", "Digest", "Problem", "Detail"],
            (
                [p["table"], p["row"], p["column"], p["digest"][:12], p["problem"], p["detail"]]
                for p in problems
            ),
            title="fsck: rows whose blob is missing or corrupt",
        )
    status = "clean" if data["ok"] else f"{len(problems)} PROBLEM(S)"
    out.result(
        f"fsck: {status}; {data['checked']} blob(s) checked, "
        f"{len(data['orphans'])} orphan(s) ({human_bytes(data['orphan_bytes'])}, "
        "reclaim with `mta gc`)"
    )


# Also reachable as `mta gc` / `mta fsck` (attached in app.py), the names DESIGN.md uses.
storage_app.command("gc")(storage_gc)
storage_app.command("fsck")(storage_fsck)
