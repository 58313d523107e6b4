"""The client's configuration, apart from its behaviour: timeouts, the retry policy, the token rule, limits.

Each value is checked once, here, when it is made; the ID and seconds rules are :mod:`.types`' (``check_id``,
``check_seconds``), turned into ``DbtCloudConfigError`` at this boundary.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from importlib import metadata

import httpx

from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudConfigError
from dbt_cloud_gate.dbtcloud_api.types import check_seconds
from dbt_cloud_gate.dbtcloud_api.urls import describe_character

__all__ = [
    "DEFAULT_RUN_INCLUDES",
    "MAX_CAUSE_LENGTH",
    "MAX_PAGE_SIZE",
    "NO_RETRY",
    "USER_AGENT",
    "RetryPolicy",
    "Timeouts",
    "check_page",
    "validate_api_token",
]

MAX_CAUSE_LENGTH = 255
MAX_PAGE_SIZE = 100

DEFAULT_RUN_INCLUDES: tuple[str, ...] = ("run_steps", "job", "trigger")


def _package_version() -> str:
    try:
        return metadata.version("dbt-cloud-gate")
    except metadata.PackageNotFoundError:
        return "0.0.0"


USER_AGENT = f"dbt-cloud-gate/{_package_version()} (+python-httpx)"


def config_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """:func:`.types.check_seconds`, refusing with a ``DbtCloudConfigError`` (the client's error tree)."""
    try:
        return check_seconds(name, value, allow_zero=allow_zero)
    except ValueError as exc:
        raise DbtCloudConfigError(str(exc)) from None


def check_page(limit: object, offset: object) -> None:
    """Refuse a page that dbt Cloud would not serve: ``limit`` from 1 to ``MAX_PAGE_SIZE``, ``offset`` 0 or more."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise DbtCloudConfigError(f"limit must be an integer between 1 and {MAX_PAGE_SIZE}, got {limit!r}.")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise DbtCloudConfigError(f"offset must be an integer, 0 or more, got {offset!r}.")


# The metadata of a seconds field that may be 0 (a delay that may be none), declared beside the field.
_MAY_BE_ZERO = {"may_be_zero": True}


@dataclass(frozen=True)
class _Checked:
    """A frozen settings dataclass whose every field is checked when it is made: an ``int`` field is a count of at
    least 1, a ``float`` field a finite number of seconds, positive (or 0 too, with ``_MAY_BE_ZERO`` metadata)."""

    def __post_init__(self) -> None:
        for item in fields(self):
            label, value = f"{type(self).__name__}.{item.name}", getattr(self, item.name)
            if item.type != "int":  # a string: this module's annotations are postponed
                config_seconds(label, value, allow_zero=bool(item.metadata.get("may_be_zero")))
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DbtCloudConfigError(f"{label} must be an integer of at least 1, got {value!r}.")


@dataclass(frozen=True)
class Timeouts(_Checked):
    """Finite timeouts, in seconds, for every request.

    ``connect``, ``read``, ``write`` and ``pool`` bound each phase (``read`` each read from the socket);
    ``total`` bounds one attempt as a whole, however the server spreads its answer (a body trickled a byte
    at a time still ends there).
    """

    connect: float = 10.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 30.0
    total: float = 120.0

    def to_httpx(self, left: float | None = None) -> httpx.Timeout:
        """The equivalent ``httpx.Timeout``, each phase capped to ``left`` seconds when given."""
        cap = math.inf if left is None else max(left, 0.001)
        return httpx.Timeout(
            connect=min(self.connect, cap),
            read=min(self.read, cap),
            write=min(self.write, cap),
            pool=min(self.pool, cap),
        )


@dataclass(frozen=True)
class RetryPolicy(_Checked):
    """How often and how long to retry what is safe to retry.

    ``max_unreadable_attempts`` bounds the attempts of a read answered 2xx with a body that is not dbt Cloud's
    (an HTML page from a proxy, other JSON, another run): it may be transient, but not for long.
    """

    max_attempts: int = 6
    max_elapsed_seconds: float = 120.0
    # No backoff, no Retry-After honoured, no 404 grace: each may be switched off; the total time may not.
    backoff_initial_seconds: float = field(default=0.5, metadata=_MAY_BE_ZERO)
    backoff_max_seconds: float = field(default=30.0, metadata=_MAY_BE_ZERO)
    max_retry_after_seconds: float = field(default=120.0, metadata=_MAY_BE_ZERO)
    not_found_grace_seconds: float = field(default=15.0, metadata=_MAY_BE_ZERO)
    max_unreadable_attempts: int = 3

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, capped, with equal jitter."""
        ceiling = min(self.backoff_max_seconds, self.backoff_initial_seconds * (2 ** min(attempt - 1, 60)))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


NO_RETRY = RetryPolicy(max_attempts=1)


def validate_api_token(token: object) -> str:
    """The API token, stripped of surrounding whitespace, if it can go into an HTTP header; else a clear error.

    A dbt Cloud token is printable ASCII without spaces. A line break, tab or non-ASCII character inside it
    (a copy-paste accident) would make every request fail with an error that quotes the header, token and
    all; it is refused here instead, with a message that never contains the token.
    """
    if not isinstance(token, str):
        raise DbtCloudConfigError(f"The dbt Cloud API token must be a string, got {type(token).__name__}.")
    text = token.strip()
    if not text:
        raise DbtCloudConfigError("The dbt Cloud API token is empty: set DBT_CLOUD_API_TOKEN or the block's api_token.")
    for position, char in enumerate(text):
        if not "!" <= char <= "~":
            # Name the kind of character, never the token around it.
            kind = describe_character(char) if ord(char) < 128 else "a non-ASCII character"
            raise DbtCloudConfigError(
                f"The dbt Cloud API token contains {kind} at position {position} of {len(text)}: a token is "
                "printable ASCII with no spaces or line breaks. Copy it again from dbt Cloud (Account settings, "
                "Service tokens)."
            )
    return text
