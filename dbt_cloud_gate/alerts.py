"""Notification blocks for failure alerts: loaded by reference (``type-slug/name``) and checked before anything
is triggered, so that a misspelt block fails at once, naming it."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect.blocks.notifications import NotificationBlock


def load_notification_block(reference: str | NotificationBlock) -> NotificationBlock:
    """A notification block given as an instance or as ``block-type-slug/name`` (``slack-webhook/data-alerts``)."""
    if isinstance(reference, NotificationBlock):
        return reference
    if "/" not in reference:
        raise ValueError(
            f"Alert block {reference!r} must be named with its type, like 'slack-webhook/{reference}' or "
            f"'custom-webhook/{reference}'."
        )
    block = Block.load(reference, _sync=True)  # type: ignore[call-arg]  # sync, also inside an async flow
    if not isinstance(block, NotificationBlock):
        raise ValueError(f"Block {reference!r} is not a notification block (it cannot send alerts).")
    return block


def alert_block_problems(references: list[str] | None) -> list[str]:
    """Each of ``references`` that cannot be loaded as a notification block, as ``'name': why`` (none: all load)."""
    problems: list[str] = []
    for reference in references or []:
        try:
            load_notification_block(reference)
        except Exception as exc:
            problems.append(f"{reference!r}: {str(exc).rstrip('. ')}")
    return problems


def unloadable_blocks_message(problems: list[str]) -> str:
    """The one sentence that names alert blocks that cannot be loaded (``problems``: :func:`alert_block_problems`)."""
    return f"Alert blocks that cannot be loaded: {'; '.join(problems)}."


def check_alert_blocks(references: list[str] | None) -> None:
    """Load every alert block before anything is triggered: a misspelt name found only when a run fails would
    lose that alert. Raises ``ValueError`` naming each block that cannot be loaded and how to create it."""
    problems = alert_block_problems(references)
    if problems:
        raise ValueError(
            unloadable_blocks_message(problems) + " Nothing was triggered: save the block first (Prefect UI > Blocks, "
            "or SlackWebhook(url=...).save('name')), or fix the name."
        )
