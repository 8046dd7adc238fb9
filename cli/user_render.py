"""How `mta user` commands print a user's fusion recipe."""

from __future__ import annotations

from typing import Any

from mta.cli.output import Output


def render_recipe(out: Output, recipe: dict[str, Any]) -> None:
    """A table of the recipe's anchors with their scores and weights."""
    out.table(
        ["Anchor", "Score", "Weight"],
        (
            [a.get("anchor_id"), f"{a.get('score', 0.0):.4f}", f"{a.get('weight', 0.0):.4f}"]
            for a in recipe.get("anchors") or []
        ),
        title=(
            f"Recipe {recipe.get('recipe_id')} for {recipe.get('user_id')}: "
            f"{recipe.get('method')} fusion, {recipe.get('weight_rule')} weights, "
            f"bank {recipe.get('task')} v{recipe.get('bank_version')}"
        ),
    )
