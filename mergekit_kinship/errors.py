"""Errors that are the user's to fix.

Engines raise :class:`UserError` for bad input (a path that is not a model, an unknown metric,
a malformed recipe ...). The CLI prints its message as one line and exits with status 2; any
other exception is a bug and keeps its traceback. :func:`did_you_mean` is how every such
message suggests the name the user probably meant.
"""

import difflib
from typing import Optional, Sequence


class UserError(Exception):
    """A mistake in the user's input. The message is one line that names the field or file."""


def closest(word: str, options: Sequence[str]) -> Optional[str]:
    close = difflib.get_close_matches(word, list(options), n=1)
    return close[0] if close else None


def did_you_mean(word: str, options: Sequence[str], *, list_options: bool = True) -> str:
    """'; did you mean 'x'?' for the closest of ``options``; else, with ``list_options``, the
    options themselves (for a short list), or nothing."""
    close = closest(word, options)
    if close:
        return f"; did you mean {close!r}?"
    if not list_options:
        return ""
    return f" (valid: {', '.join(sorted(options))})" if options else " (it takes none)"
