"""Write the logic once, drive it twice: a generator of steps, and the handle its sync and async drivers hold.

The logic (the client's retry loop, the wait for a run) is a generator that yields steps (send this, sleep that)
and is sent what each step gave (``None`` after a sleep), or thrown what it raised. A driver iterates an :class:`Exchange` and reports
each step's outcome with :meth:`Exchange.reply`; it does the I/O and nothing else, so the sync and async twins
repeat only ``send`` and ``sleep``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Exchange", "Send", "Sleep"]

S = TypeVar("S")  # the steps
R = TypeVar("R")  # what a step gives back
T = TypeVar("T")  # the answer


@dataclass(frozen=True)
class Send:
    """Make a request with these keyword ``arguments``; it must end by ``deadline`` (``time.monotonic()``)."""

    arguments: dict[str, Any]
    deadline: float


@dataclass(frozen=True)
class Sleep:
    """Sleep this many seconds before going on."""

    seconds: float


class Exchange(Generic[S, R, T]):
    """A generator of steps, for a driver: iterate for the steps to take, report each with :meth:`reply`.

    Iteration ends when the generator returns; :attr:`answer` is then what it returned. An exception the
    generator raises (its final error) comes out of :meth:`reply`.
    """

    def __init__(self, steps: Generator[S, R | None, T]) -> None:
        self._steps = steps
        self._step: S | None = next(steps)
        self._answer: T | None = None
        self._replied = False

    def __iter__(self) -> Iterator[S]:
        while self._step is not None:
            self._replied = False
            yield self._step
            if not self._replied:  # a step with no result (a sleep): the generator goes on
                self.reply(None)

    def reply(self, outcome: R | BaseException | None) -> None:
        """What the last step gave: its result, or the exception it raised (thrown in). A sleep needs no reply."""
        self._replied = True
        try:
            if isinstance(outcome, BaseException):
                self._step = self._steps.throw(outcome)
            else:
                self._step = self._steps.send(outcome)
        except StopIteration as done:
            self._step, self._answer = None, done.value

    @property
    def answer(self) -> T:
        """What the generator returned, once iteration has ended (never ``None``)."""
        assert self._answer is not None, "the exchange has not ended"
        return self._answer
