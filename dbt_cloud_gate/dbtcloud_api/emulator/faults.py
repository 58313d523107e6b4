"""What every emulator fault shares (HTTP faults in ``specs``/``routes``, webhook faults in ``webhooks``).

A fault that matches fires at most ``times`` times, with ``probability`` (the emulator's seeded random), after
letting its first ``skip`` matches through; ``hits`` and ``skipped`` count what happened. :class:`CountedFault`
holds these settings and the rule; :class:`FaultInjection` is the part of the emulator that keeps a list of them.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar


@dataclass(kw_only=True)
class CountedFault:
    """The settings every fault has: the job it is limited to (``None``: any), and the firing rule's."""

    job_id: int | None = None
    times: int | None = None
    probability: float = 1.0
    skip: int = 0
    hits: int = 0
    skipped: int = 0

    def spent(self) -> bool:
        """Whether the fault has fired its ``times`` already."""
        return self.times is not None and self.hits >= self.times

    def fires(self, rng: random.Random) -> bool:
        """For a fault that matched: whether it fires now (its probability, then its skips); a firing is counted."""
        if self.probability < 1.0 and rng.random() >= self.probability:
            return False
        if self.skipped < self.skip:
            self.skipped += 1
            return False
        self.hits += 1
        return True


F = TypeVar("F", bound=CountedFault)


class FaultInjection(Generic[F]):
    """A part of the emulator that takes injected faults, in the order given, under its ``_lock``."""

    faults: list[F]
    _rng: random.Random
    _lock: threading.RLock

    def add_fault(self, fault: F) -> F:
        """Inject ``fault`` into what it matches, from now on."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self.faults.clear()

    def _firing(self, matches: Callable[[F], bool]) -> Iterator[F]:
        """The faults not spent that match and fire, in order; lazily, so a caller taking the first one leaves
        the others' counts (and the random draws) alone."""
        for fault in self.faults:
            if not fault.spent() and matches(fault) and fault.fires(self._rng):
                yield fault
