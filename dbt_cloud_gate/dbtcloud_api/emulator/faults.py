"""The firing rule every emulator fault follows (HTTP faults in ``routes``, webhook faults in ``webhooks``).

A fault that matches fires at most ``times`` times, with ``probability`` (the emulator's seeded random), after
letting its first ``skip`` matches through; ``hits`` and ``skipped`` count what happened.
"""

from __future__ import annotations

import random
from typing import Protocol


class CountedFault(Protocol):
    """What the rule reads and counts on a fault."""

    times: int | None
    probability: float
    skip: int
    hits: int
    skipped: int


def spent(fault: CountedFault) -> bool:
    """Whether the fault has fired its ``times`` already."""
    return fault.times is not None and fault.hits >= fault.times


def fires(fault: CountedFault, rng: random.Random) -> bool:
    """For a fault that matched: whether it fires now (its probability, then its skips); a firing is counted."""
    if fault.probability < 1.0 and rng.random() >= fault.probability:
        return False
    if fault.skipped < fault.skip:
        fault.skipped += 1
        return False
    fault.hits += 1
    return True
