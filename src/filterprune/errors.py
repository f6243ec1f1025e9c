"""The error type for bad user input (CLI: one line, exit code 2), and the warning type for
work done short of what was asked."""

import os
import sys
import warnings


class FilterpruneError(ValueError):
    """A problem with the user's input: unknown name, bad ratio, missing data, malformed config.

    It subclasses ValueError so that API callers can catch either.
    """


class FilterpruneWarning(UserWarning):
    """The tool did less than was asked, e.g. pruning reached under half of the requested conv
    MACs (CLI: one line on stderr). Turn it into an error with ``strict=True`` or
    ``warnings.simplefilter("error", FilterpruneWarning)``."""


def warn(message: str) -> None:
    """Issues a FilterpruneWarning attributed to the first caller outside filterprune."""
    package = os.path.dirname(__file__) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, FilterpruneWarning, stacklevel=level)
