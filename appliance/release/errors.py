"""The one error the engineer's release tools raise: a line saying what is wrong and what to do."""


class ReleaseError(Exception):
    """A release operation was refused; ``str()`` is one line for the command line."""
