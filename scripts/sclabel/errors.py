"""One error type for bad input: a single line naming the file, the field and the fix."""

from __future__ import annotations

from os import PathLike


def one_line(text: object) -> str:
    """``text`` on one line (whitespace runs collapsed)."""
    return " ".join(str(text).split())


class InputError(ValueError):
    """Bad user input; ``str(err)`` is one line: ``<file>: <field>: <problem>. Fix: <fix>``."""

    def __init__(self, file: str | PathLike[str], field: str, problem: str, fix: str) -> None:
        self.file = str(file)
        self.field = field
        self.problem = problem
        self.fix = fix
        line = f"{self.file}: {field}: {problem}. Fix: {fix}"
        super().__init__(one_line(line))
