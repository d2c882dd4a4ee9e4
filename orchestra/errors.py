"""The one exception users see: a refusal that says what is wrong and how to fix it."""


class OrchestraError(Exception):
    """A refusal of bad input or an impossible request.

    The message is one line, names the problem and the fix; the CLI prints it and exits non-zero.
    Raised before anything is written, so the database stays exactly as it was.
    """


class NotFound(OrchestraError):
    """The named dataset, task or job does not exist."""


class PermissionDenied(OrchestraError):
    """The caller may not act on another user's object."""
