"""What the route modules share of their inputs: the `/v1` prefix, `UserId`, `Task`, bank refs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from mta.registry.errors import NotFoundError
from mta.registry.service import validate_user_id

from .schemas import TASK_REGEX, USER_ID_REGEX

# Each versioned route module puts this prefix on its own router rather than being included
# into a "/v1" router: FastAPI keeps an included route as it is, and the route's `path`,
# without the prefixes of the routers that include it, is the metrics' route label.
V1 = "/v1"

# The largest bank version any supported database can hold (PostgreSQL's INTEGER; SQLite's
# is wider). A larger number names no bank, and binding it in a query would fail in the
# driver (an OverflowError on SQLite, an out-of-range error on PostgreSQL).
MAX_BANK_VERSION = 2**31 - 1


# The check does no I/O, so it is `async def`: FastAPI runs a sync dependency on the
# threadpool, a thread hop per dependency per request that costs more than the check itself.
async def _user_id(
    user_id: Annotated[str, Path(pattern=USER_ID_REGEX, description="The user's id.")],
) -> str:
    # The pattern lets "." and ".." through; the service's rule refuses them (422).
    return validate_user_id(user_id)


UserId = Annotated[str, Depends(_user_id)]
Task = Annotated[str, Path(pattern=TASK_REGEX, description="LaMP task name, e.g. citation.")]


def checked_bank_ref(ref: str | None) -> str | None:
    """`ref` unchanged, unless it is a version number no bank can have: then a 404 here.

    The service reads a ref made of digits ("3", "v3") as a version number; this refuses
    those it could not look up: over MAX_BANK_VERSION, or digits outside ASCII ("²").

    Raises:
        NotFoundError: such a version number (the same 404 as any unknown version).
    """
    if ref is None:
        return None
    text = ref.strip()
    number = text[1:] if text[:1] in ("v", "V") else text
    if number.isdigit() and not (number.isascii() and int(number) <= MAX_BANK_VERSION):
        raise NotFoundError(
            f"no bank version {text!r}: versions are numbers from 1 to {MAX_BANK_VERSION}"
        )
    return ref


async def _bank_ref(
    ref: Annotated[
        str | None,
        Query(max_length=64, description="Version number or alias (default: latest)."),
    ] = None,
) -> str | None:
    return checked_bank_ref(ref)


BankRef = Annotated[str | None, Depends(_bank_ref)]
