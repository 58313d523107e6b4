"""What a preflight found: problems (each names the parameter, the object and the fix), warnings, what it could
not check, and what it cost."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Findings", "Problem", "did_you_mean"]


@dataclass(frozen=True)
class Problem:
    """One problem: the parameter to change, what is wrong with which object, and what to do."""

    parameter: str
    message: str
    fix: str

    def line(self) -> str:
        """The problem as one line: ``targets[1].source_table: ... Fix: ...``."""
        return f"{self.parameter}: {self.message} Fix: {self.fix}"


@dataclass
class Findings:
    """Problems, warnings and notes of one preflight, with its cost (statements, dbt Cloud requests)."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    statements: int = 0
    requests: int = 0

    def add(self, parameter: str, message: str, fix: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(parameter, message, fix))

    @property
    def lines(self) -> list[str]:
        """One line per problem."""
        return [problem.line() for problem in self.problems]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``choices`` to ``name`` (case-insensitive), or ``""``."""
    by_upper = {choice.upper(): choice for choice in choices}
    close = difflib.get_close_matches(name.upper(), list(by_upper), n=1, cutoff=0.6)
    return f" (did you mean {by_upper[close[0]]!r}?)" if close else ""
