"""The doctor's checklist as text (one line per check, the fix under each failure or warning) and as JSON."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from dbt_cloud_gate.doctor.core import Check, Status, exit_code

__all__ = ["render_json", "render_text"]

_LABELS = {Status.OK: "ok", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"}


def render_text(checks: Sequence[Check]) -> str:
    """One line per check (``ok``, ``WARN``, ``FAIL``, ``skip``, its name, what it saw), the fix under each
    failure and warning, then a summary line."""
    width = max((len(check.name) for check in checks), default=0)
    lines = []
    for check in checks:
        lines.append(f"{_LABELS[check.status]:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status in (Status.FAIL, Status.WARN):
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    counts = Counter(check.status for check in checks)
    summary = ", ".join(f"{counts[status]} {label}" for status, label in _SUMMARY if counts[status])
    verdict = "something failed" if exit_code(checks) else "nothing failed"
    lines.append(f"\n{verdict}: {summary}.")
    return "\n".join(lines)


_SUMMARY = ((Status.FAIL, "failed"), (Status.WARN, "warning(s)"), (Status.OK, "ok"), (Status.SKIP, "skipped"))


def render_json(checks: Sequence[Check]) -> str:
    """``{"ok": ..., "exit_code": ..., "checks": [{"name", "status", "detail", "fix"}, ...]}``."""
    code = exit_code(checks)
    return json.dumps({"ok": code == 0, "exit_code": code, "checks": [c.to_json() for c in checks]}, indent=2)
