"""The one user-facing exception: the CLIs turn it into a single `ERROR:` line and a non-zero exit."""


class ConvitError(Exception):
    """A problem the user can fix (bad input, missing data, unreachable service); not a bug."""
