"""The guards on a reconcile's deletes, checked under the target's lock before anything is written.

``propagate_deletes`` deletes every target row whose key the source lacks. Three things make that a loss rather
than a repair, and each refuses the deletes (``DeletesRefused``; a dry run reports the refusal instead):

1. another source is registered for the target (``dbt_cloud_gate.sources``): its rows are not in this source;
2. the source holds no row with a key (a dbt build that left the model empty), unless ``allow_empty_source``;
3. more rows would go than the ceiling allows (``max_delete_fraction`` of the target's rows, ``max_deletes``).

The counts are read before the first write of the reconcile's transaction, and the DELETE's own count is checked
against the ceiling again after it (on Snowflake, READ COMMITTED, the source may change in between): a refusal
at either point rolls the whole transaction back, so nothing is half-written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbt_cloud_gate import audit, sources
from dbt_cloud_gate import loads_sql as q
from dbt_cloud_gate.errors import DeletesRefused

if TYPE_CHECKING:
    from dbt_cloud_gate.loads import LoadPlan

__all__ = ["DeleteCheck", "check_deletes"]


@dataclass(frozen=True)
class DeleteCheck:
    """What ``propagate_deletes`` would delete from one target, counted before any write, and whether it may."""

    target_rows: int
    to_delete: int
    allowed: int
    refusal: str | None = None  # why the deletes are refused; None: they may go ahead

    def enforce(self, dry_run: bool) -> None:
        """Refuse (``DeletesRefused``) unless the deletes may go ahead or this is a dry run, which reports it."""
        if self.refusal and not dry_run:
            raise DeletesRefused(self.refusal, rows_to_delete=self.to_delete)

    def confirm(self, deleted: int, target: str) -> None:
        """After the DELETE: refuse (the caller rolls back) when it deleted more than the ceiling allows."""
        if deleted > self.allowed:
            raise DeletesRefused(
                f"propagate_deletes deleted {deleted} rows of {target} where {self.to_delete} were counted just "
                f"before, above the ceiling of {self.allowed} (the source changed during the reconcile?); rolled "
                "back, nothing changed. Run the reconcile again once the source is stable.",
                rows_to_delete=deleted,
            )


def check_deletes(cursor: Any, plan: LoadPlan, shape: q.LoadShape) -> DeleteCheck:
    """Count the target's rows and those ``propagate_deletes`` would delete; decide whether it may."""
    settings, target = plan.reconcile, plan.target_name
    others = sources.other_sources(
        cursor, plan.registry_parts, target=target, source=plan.source_name, timeout=plan.timeout
    )
    audit.run(cursor, q.delete_guard_counts(shape), timeout=plan.timeout)
    target_rows, to_delete, keyed = (int(v or 0) for v in cursor.fetchone() or (0, 0, 0))
    allowed = settings.allowed_deletes(target_rows)
    check = DeleteCheck(target_rows=target_rows, to_delete=to_delete, allowed=allowed)
    registry = q.table_display(plan.registry_parts)
    if others:
        retire = f"UPDATE {registry} SET RETIRED_AT = CURRENT_TIMESTAMP() WHERE SOURCE_TABLE = '<source>'"
        reason = (
            f"propagate_deletes would delete from {target} the rows that other sources load into it too: "
            f"{'; '.join(o.describe() for o in others)}. Nothing changed. Reconcile without propagate_deletes, "
            f"or give each source a target of its own; if a source no longer feeds {target}, retire it: {retire}."
        )
    elif to_delete and not keyed and not settings.allow_empty_source:
        reason = (
            f"{plan.source_name} holds no row with a key, so propagate_deletes would delete all {to_delete} rows of "
            f"{target} (a dbt build that left the model empty?). Nothing changed. If the source is empty on "
            "purpose, set reconcile.allow_empty_source=True (and max_delete_fraction=1 to let every row go)."
        )
    elif to_delete > allowed:
        reason = _above_ceiling(plan, check)
    else:
        return check
    return DeleteCheck(target_rows=target_rows, to_delete=to_delete, allowed=allowed, refusal=reason)


def _above_ceiling(plan: LoadPlan, check: DeleteCheck) -> str:
    """The ceiling's refusal: the count, the share, and the setting that would allow it."""
    settings, total, count = plan.reconcile, check.target_rows, check.to_delete
    exceeded = []
    if count > settings.deletes_within_fraction(total):
        needed = math.ceil(count / total * 100) / 100
        exceeded.append(f"max_delete_fraction={settings.max_delete_fraction:g} (set it to {needed:g} or more)")
    if settings.max_deletes is not None and count > settings.max_deletes:
        exceeded.append(f"max_deletes={settings.max_deletes} (set it to {count} or more)")
    return (
        f"propagate_deletes would delete {count} of {total} rows of {plan.target_name} ({count / total:.0%}), "
        f"above reconcile.{' and reconcile.'.join(exceeded)}. Nothing changed. Check why {plan.source_name} "
        "lacks them; if the deletes are expected, raise the setting, or try a dry run (reconcile.dry_run=True)."
    )
