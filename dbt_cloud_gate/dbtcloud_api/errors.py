"""Exceptions raised by the dbt Cloud client and the wait.

Every message names the HTTP method and path (never the full URL with a query, never a header) and the
service's ``user_message`` when it sent one. The API token is scrubbed, in every form it can take in a text
(raw, escaped, URL-encoded), from anything that reaches a message.

::

    DbtCloudError
    ├── DbtCloudConfigError (also ValueError)     bad configuration or argument, refused before any request
    ├── DbtCloudAPIError                          an HTTP error status
    │   ├── DbtCloudAuthError                     401, 403
    │   ├── DbtCloudNotFoundError                 404
    │   ├── DbtCloudBadRequestError               400
    │   ├── DbtCloudRateLimitError                429 after retries
    │   └── DbtCloudServerError                   5xx after retries
    ├── DbtCloudTransportError                    no HTTP answer
    │   └── DbtCloudDeadlineExceeded              the caller's deadline passed before an answer
    ├── DbtCloudResponseError                     a 2xx answer this client cannot trust
    │   ├── DbtCloudRunMismatchError              another run (account, job) than the one asked for
    │   └── DbtCloudMissingFinishedAtError        a Success without finished_at (no watermark)
    ├── DbtCloudAmbiguousTriggerError             a run may or may not have been started
    └── WaitTimedOut                              the run did not finish before the wait's deadline
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, quote_plus


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


class DbtCloudDeadlineExceeded(DbtCloudTransportError):
    """The caller's deadline (see ``dbtcloud_api.client.request_deadline``) passed before an answer came."""


class DbtCloudResponseError(DbtCloudError):
    """dbt Cloud answered 2xx with a body this client cannot read or trust (after a few retries of a read)."""


class DbtCloudRunMismatchError(DbtCloudResponseError):
    """A run read back is not the one asked for (another run ID, account or job): a server or proxy fault."""

    # Like DbtCloudError's and WaitTimedOut's constructors in shape only: each error types its own attributes.
    def __init__(
        self,
        message: str,
        *,
        expected_run_id: int | None = None,
        received_run_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.expected_run_id = expected_run_id
        self.received_run_id = received_run_id


class DbtCloudMissingFinishedAtError(DbtCloudResponseError):
    """dbt Cloud reports a run as Success but gives no ``finished_at``, even after re-reading it.

    Downstream steps take ``finished_at`` as their watermark: a success without it must not reach them.
    ``run`` is the run as last read.
    """

    def __init__(self, message: str, *, run_id: int, run: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.run_id = run_id
        self.run = run


class DbtCloudAmbiguousTriggerError(DbtCloudError):
    """A request that starts a run failed after it may have reached dbt Cloud.

    A run may or may not have been created. Do not simply send it again: look for a run of ``job_id``
    carrying the same cause (``DbtCloudClient.find_runs_by_cause``) first.
    """

    def __init__(self, message: str, *, job_id: int | None = None, cause: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.job_id = job_id
        self.cause = cause


class WaitTimedOut(DbtCloudError):
    """The run reached no terminal status before the wait's deadline.

    ``run`` is the last state read before the deadline (``None`` if no poll succeeded); ``phase`` is where the
    run stood then (``never-read``, ``queued``, ``starting``, ``running`` or ``unknown``), and ``description``
    says it in words ("still queued after 600 s, never started", "running for 540 s (started at ...)"); the
    message is that, with the run ID and the deadline. All stay as they were at the deadline, whatever is done to
    the run afterwards.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: int,
        run: Any,
        waited_seconds: float,
        phase: str = "unknown",
        max_wait_seconds: float | None = None,
        status_at_deadline: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.run = run
        self.waited_seconds = waited_seconds
        self.phase = phase
        self.description = description or message
        self.max_wait_seconds = max_wait_seconds
        self.status_at_deadline = status_at_deadline


def secret_forms(secret: str) -> list[str]:
    """Every form ``secret`` can take inside a text: raw, ``repr``/JSON-escaped, URL-encoded, as ``bytes`` repr."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
    for encoding in ("utf-8", "latin-1"):
        try:
            forms.add(repr(secret.encode(encoding))[2:-1])
        except UnicodeEncodeError:
            pass
    forms.add(secret.encode("unicode_escape").decode("ascii"))
    # Longest first, so that a form containing another is replaced whole.
    return sorted((form for form in forms if form), key=len, reverse=True)


def scrub(text: str, secret: str | None) -> str:
    """Replace every form of ``secret`` in ``text`` with ``***`` (a safety net: messages are built without it)."""
    if not secret or len(secret) < 4:
        return text
    for form in secret_forms(secret):
        if form in text:
            text = text.replace(form, "***")
    return text


LOCAL_EXTRA_HINT = "pip install 'dbt-cloud-gate[local]'"


def local_extra_missing(exc: ImportError, needed_for: str, distributions: dict[str, str]) -> ImportError:
    """The ImportError to raise when a local stand-in's dependency is absent: a production install leaves the
    ``[local]`` extra out, so say what is missing and how to get it, not just the module's name."""
    missing = (exc.name or next(iter(distributions))).split(".")[0]
    return ImportError(
        f"{needed_for} need the module {missing!r} ({distributions.get(missing, missing)}), which is not "
        f"installed: {LOCAL_EXTRA_HINT}",
        name=missing,
    )
