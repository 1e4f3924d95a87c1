"""`python -m launcher ...`: the CLI boundary. User errors become one `ERROR:` line and exit code 1 (2 for
usage errors); only real bugs show a traceback."""

from __future__ import annotations

import sys

from convit.errors import ConvitError


def main(argv: list[str] | None = None) -> int:
    import logging

    from launcher.cli import run

    # Transport retries are the client's business; the user sees one line when they finally fail.
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    try:
        return run(argv)
    except ConvitError as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
