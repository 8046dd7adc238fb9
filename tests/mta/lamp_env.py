"""Where the LaMP test data lives: the official-format fixtures and the real shared users.

Not a test module: `test_lamp_data.py` and `test_tasks.py` import it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "lamp"
SHARED_LAMP = Path(os.environ.get("MTA_LAMP_DIR") or REPO / ".." / "shared" / "lamp")


def shared_users_path(task: str) -> Path:
    """The real LaMP users file of `task`; skips the calling test when it is absent."""
    path = SHARED_LAMP / task / "users.json"
    if not path.is_file():
        pytest.skip(f"real LaMP users not found at {path} (set MTA_LAMP_DIR)")
    return path
