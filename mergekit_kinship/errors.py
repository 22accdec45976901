"""Errors that are the user's to fix.

Engines raise :class:`UserError` for bad input (a path that is not a model, an unknown metric,
a malformed recipe ...). The CLI prints its message as one line and exits with status 2; any
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input. The message is one line that names the field or file."""
