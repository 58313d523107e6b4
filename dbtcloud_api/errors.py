"""Exceptions raised by the dbt Cloud client.

Every message names the HTTP method and path (never the full URL with a query, never a header) and the
service's ``user_message`` when it sent one. The API token is scrubbed from anything that reaches a message.
"""

from __future__ import annotations

from typing import Any


class DbtCloudError(Exception):
    """Base class of every error of the dbt Cloud client."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status_code: int | None = None,
        user_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path
        self.status_code = status_code
        self.user_message = user_message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword attributes through pickling (Prefect serializes exceptions into states).
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[DbtCloudError], message: str, state: dict[str, Any]) -> DbtCloudError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class DbtCloudConfigError(DbtCloudError, ValueError):
    """The client was configured with a bad value (an access URL, an account ID...)."""


class DbtCloudAPIError(DbtCloudError):
    """dbt Cloud answered with an HTTP error status."""


class DbtCloudAuthError(DbtCloudAPIError):
    """401 or 403: the token is missing, wrong, expired, or lacks permission on this account."""


class DbtCloudNotFoundError(DbtCloudAPIError):
    """404: the account, job, run or artifact does not exist (or the token cannot see it)."""


class DbtCloudBadRequestError(DbtCloudAPIError):
    """400: the service refused the request; ``field_errors`` maps each bad field to its messages."""

    def __init__(self, message: str, *, field_errors: dict[str, list[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field_errors = field_errors or {}


class DbtCloudRateLimitError(DbtCloudAPIError):
    """429: the account's API rate limit was hit and retries did not get through in time."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class DbtCloudServerError(DbtCloudAPIError):
    """5xx: dbt Cloud, or a proxy in front of it, failed; retries did not get through in time."""


class DbtCloudTransportError(DbtCloudError):
    """The request did not get an HTTP answer: connection refused or dropped, timeout, TLS failure."""


class DbtCloudResponseError(DbtCloudError):
    """dbt Cloud answered 2xx with a body this client cannot read."""


class DbtCloudAmbiguousTriggerError(DbtCloudError):
    """A request that starts a run failed after it may have reached dbt Cloud.

    A run may or may not have been created. Do not simply send it again: look for a run of ``job_id``
    carrying the same cause (``DbtCloudClient.find_runs_by_cause``) first.
    """

    def __init__(self, message: str, *, job_id: int | None = None, cause: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.job_id = job_id
        self.cause = cause


def scrub(text: str, secret: str | None) -> str:
    """Replace every occurrence of ``secret`` in ``text`` (a safety net: messages are built without it)."""
    if secret and len(secret) >= 4 and secret in text:
        return text.replace(secret, "***")
    return text
