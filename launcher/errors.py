"""The launcher's user-facing error: one line, with the namespace and name of what it was about."""

from convit.errors import ConvitError


class LauncherError(ConvitError):
    """Submitting, watching or deleting a job failed for a reason the user can act on."""
