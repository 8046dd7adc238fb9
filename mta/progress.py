"""The one progress-callback type every long operation accepts."""

from __future__ import annotations

from collections.abc import Callable

# Called as (stage, done, total), e.g. ("train", 3, 12); the CLI draws it, the server stores it.
ProgressFn = Callable[[str, int, int], None]
