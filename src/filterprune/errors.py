"""The error type for bad user input (CLI: one line, exit code 2)."""


class FilterpruneError(ValueError):
    """A problem with the user's input: unknown name, bad ratio, missing data, malformed config.

    It subclasses ValueError so that API callers can catch either.
    """
