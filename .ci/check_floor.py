"""The floor stage's check: .ci/floor-constraints.txt pins each direct dependency at pyproject.toml's lower bound,
and those versions are the ones installed (run with the floor venv's Python)."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Print the floor; exit 1 naming each dependency whose pin, bound or installed version disagree."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / ".ci/floor-constraints.txt").read_text(), re.M))
    problems = []
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)>=([^,]+)", requirement)
        if match is None:
            problems.append(f"{requirement}: no lower bound (>=) in pyproject.toml")
        elif pins.get(match[1]) != match[2]:
            problems.append(
                f"{match[1]}: pyproject.toml's floor is {match[2]}, floor-constraints.txt pins {pins.get(match[1])}"
            )
    problems += [f"{n}: {version(n)} installed, {pin} pinned" for n, pin in pins.items() if version(n) != pin]
    print("\n".join(problems) or "floor: " + ", ".join(f"{n}=={v}" for n, v in pins.items()))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
