"""Validation and normalization of dbt Cloud access URLs."""

from __future__ import annotations

import ipaddress
import unicodedata
from urllib.parse import urlsplit

from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudConfigError

DEFAULT_ACCESS_URL = "https://cloud.getdbt.com"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback literal: ``localhost``, an address in 127.0.0.0/8, or ``::1``.

    Only these exact forms: ``evil.localhost``, ``localhost.``, ``127.1`` or a name that merely resolves to
    127.0.0.1 are not loopback here (a resolver or a proxy may send them anywhere).
    """
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(scheme: str, host: str, *, what: str, risk: str) -> None:
    """The one scheme rule for every URL we send to: ``https``, or plain ``http`` for a loopback literal only
    (:func:`is_loopback_host`). ``what`` names the URL and ``risk`` what plain http would expose, for the error.
    """
    if scheme == "https":
        return
    if scheme != "http":
        raise DbtCloudConfigError(f"{what} must start with https://.")
    if not is_loopback_host(host):
        raise DbtCloudConfigError(
            f"{what} uses plain http://, which {risk}: use https:// (plain http is allowed only for localhost, "
            "127.0.0.0/8 or ::1, written as such)."
        )


_CHARACTER_NAMES = {
    "\t": "a tab",
    "\n": "a line feed (LF)",
    "\r": "a carriage return (CR)",
    " ": "a space",
    "\x00": "a NUL character",
}


def describe_character(char: str) -> str:
    """A human name for a character that has no place in a URL or a token (never the text around it)."""
    name = _CHARACTER_NAMES.get(char)
    if name is None:
        category = unicodedata.category(char)
        kind = {"Cc": "a control character", "Cf": "an invisible format character"}.get(
            category, "a whitespace character"
        )
        name = f"{kind} (U+{ord(char):04X})"
    return name


def _is_forbidden_in_url(char: str) -> bool:
    # Whitespace, controls (Cc), format characters (Cf, e.g. zero-width space) and line/paragraph separators.
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def normalize_access_url(value: str) -> str:
    """Return ``value`` as ``https://host[:port]``, the base every API path is joined to.

    Accepts a bare host (``cloud.getdbt.com``, ``ab123.us1.dbt.com``, a single-tenant host), a URL with
    ``https://`` and trailing slashes. Refuses plain ``http://`` except for loopback hosts (the local
    emulator), and URLs with a path, query or credentials, which are always a mistake here.

    Spaces around the value are trimmed; any other whitespace or control character, anywhere, is refused: URL
    parsing silently drops tab, CR and LF, so ``"https://cloud.getdbt.com\t.evil.example"`` would otherwise
    become another host, and the API token would be sent there.
    """
    if not isinstance(value, str):
        raise DbtCloudConfigError(f"The dbt Cloud access URL must be a string, got {type(value).__name__}.")
    raw = value.strip(" ")
    if not raw:
        raise DbtCloudConfigError("The dbt Cloud access URL is empty: set it to e.g. https://cloud.getdbt.com.")
    for position, char in enumerate(raw):
        if _is_forbidden_in_url(char):
            raise DbtCloudConfigError(
                f"The dbt Cloud access URL {raw!r} contains {describe_character(char)} at position {position}: "
                "an access URL has no whitespace or control characters (URL parsing would drop some of them and "
                "reach another host). Remove it, e.g. https://cloud.getdbt.com."
            )
    candidate = raw if "://" in raw else f"https://{raw}"
    try:
        parts = urlsplit(candidate)
        port = parts.port
    except ValueError as exc:
        raise DbtCloudConfigError(f"The dbt Cloud access URL {raw!r} is not a valid URL: {exc}.") from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not host:
        raise DbtCloudConfigError(f"The dbt Cloud access URL {raw!r} has no host name.")
    if parts.username or parts.password:
        raise DbtCloudConfigError(
            "The dbt Cloud access URL must not carry credentials; put the token in the API token setting."
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise DbtCloudConfigError(
            f"The dbt Cloud access URL {raw!r} must be just the host (e.g. https://cloud.getdbt.com), "
            "without a path such as /api/v2 or a query."
        )
    check_transport(scheme, host, what=f"The dbt Cloud access URL {raw!r}", risk="would send the API token unencrypted")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}"


def run_url(access_url: str, account_id: int, run_id: int, project_id: int | None = None) -> str:
    """The link to a run in the dbt Cloud web app (``#/accounts/…/runs/…`` also resolves without a project)."""
    base = normalize_access_url(access_url)
    if project_id is not None:
        return f"{base}/deploy/{account_id}/projects/{project_id}/runs/{run_id}/"
    return f"{base}/#/accounts/{account_id}/runs/{run_id}/"
