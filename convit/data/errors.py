"""The data pipeline's user-facing error."""

from convit.errors import ConvitError


class DataError(ConvitError):
    """A dataset that is missing, empty or malformed."""
