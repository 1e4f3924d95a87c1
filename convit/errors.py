"""The one user-facing exception, and the CLI boundary that turns it into a single `ERROR:` line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable


class ConvitError(Exception):
    """A problem the user can fix (bad input, missing data, unreachable service); not a bug."""

    exit_code = 1


class UsageError(ConvitError):
    """A command or job file that can never work as given. Exit code 2: the rendered failure policies (the Indexed
    Job's podFailurePolicy, Volcano's TerminateJob policy) fail the job at once instead of retrying it."""

    exit_code = 2


# A lost peer: a rank, or the MindSpore scheduler, of the job died or stopped answering. Nothing is wrong with the job
# itself: the pod exits with this code so that its controller restarts the job from its last checkpoint (any code
# but 2 is retried by the rendered failure policies). 75 is EX_TEMPFAIL of sysexits.h, "a temporary failure".
LOST_PEER_EXIT = 75
# A replacement pod came back before the previous MindSpore cluster ended: its scheduler still holds this rank
# ("Repeated registration"). The pod supervisor starts the worker again until that cluster is gone (within
# MS_TOPO_TIMEOUT); past that, the pod fails with this code, which the controllers retry as well.
STALE_CLUSTER_EXIT = 76
# Stopped on request (SIGTERM: the pod deleted, evicted, preempted or its job suspended) after saving a checkpoint,
# before training finished. Never 0: Kubernetes counts a pod that exits 0 as Succeeded even while it is being deleted
# (kubernetes/kubernetes#120182), so an Indexed Job or a JobSet would take a suspended or deleted rank for a finished
# one. 143 is 128 + SIGTERM, what a process killed by it reports; the rendered failure policies ignore it.
STOPPED_EXIT = 143


def cli_boundary(body: Callable[[], int], *, exit_code: int | None = None) -> int:
    """Run a command's body: its exit code; a ConvitError is one `ERROR:` line and `exit_code` (default: the
    error's own), never a traceback; Ctrl-C is 130, as shells report it."""
    try:
        return body()
    except ConvitError as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code if exit_code is None else exit_code
    except KeyboardInterrupt:
        return 130
