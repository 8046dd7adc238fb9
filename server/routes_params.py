"""What the route modules share of their paths: the `/v1` prefix, `UserId` and `Task`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from mta.registry.service import validate_user_id

from .schemas import TASK_REGEX, USER_ID_REGEX

# Each versioned route module puts this prefix on its own router rather than being included
# into a "/v1" router: FastAPI keeps an included route as it is, and the route's `path`,
# without the prefixes of the routers that include it, is the metrics' route label.
V1 = "/v1"


# The check does no I/O, so it is `async def`: FastAPI runs a sync dependency on the
# threadpool, a thread hop per dependency per request that costs more than the check itself.
async def _user_id(
    user_id: Annotated[str, Path(pattern=USER_ID_REGEX, description="The user's id.")],
) -> str:
    # The pattern lets "." and ".." through; the service's rule refuses them (422).
    return validate_user_id(user_id)


UserId = Annotated[str, Depends(_user_id)]
Task = Annotated[str, Path(pattern=TASK_REGEX, description="LaMP task name, e.g. citation.")]
