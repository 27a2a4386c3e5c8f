"""The one exception type that means "the user can fix this"."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (setting, file, dataset) that the user can correct.

    ``field`` names the setting at fault, when there is one, so that callers
    can point at it: the command line shows it as its flag. Entry points
    report a UserError as a single line on stderr and exit with status 2;
    anything else is a bug and keeps its traceback.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
