"""The one exception type that means "the user can fix this"."""


class UserError(Exception):
    """A mistake in the input (flag, file, dataset) that the user can correct.

    Entry points report it as a single line on stderr and exit with status 2;
    anything else is a bug and keeps its traceback.
    """
