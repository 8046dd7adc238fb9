"""Evaluation runs: the results `mta eval` records in the registry (table `eval_runs`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mta.registry.context import RegistryContext
from mta.registry.models import SqlEvalRun, as_utc, utcnow


def record_eval_run(ctx: RegistryContext, *, task: str, config: dict, results: dict) -> int:
    """Store one evaluation run; returns its id."""
    with ctx.session() as session:
        row = SqlEvalRun(task=task, config=config, results=results, created_at=utcnow())
        session.add(row)
        session.flush()
        return int(row.id)


def list_eval_runs(ctx: RegistryContext, *, task: str | None = None) -> list[dict[str, Any]]:
    """Recorded evaluation runs, newest first, as plain dicts."""
    with ctx.read_session() as session:
        query = select(SqlEvalRun).order_by(SqlEvalRun.id.desc())
        if task is not None:
            query = query.where(SqlEvalRun.task == task)
        return [
            {
                "id": r.id,
                "task": r.task,
                "created_at": as_utc(r.created_at).isoformat(),
                "config": r.config,
                "results": r.results,
            }
            for r in session.scalars(query)
        ]
