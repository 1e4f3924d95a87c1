"""`python -m launcher ...`: the CLI boundary. User errors become one `ERROR:` line and exit code 1 (2 for
usage errors); only real bugs show a traceback."""

from __future__ import annotations

import sys

from convit.errors import cli_boundary


def main(argv: list[str] | None = None) -> int:
    import logging

    from launcher.cli import run

    # Transport retries are the client's business; the user sees one line when they finally fail.
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    def body() -> int:
        try:
            return run(argv)
        except BrokenPipeError:  # `logs | head`
            return 0

    return cli_boundary(body, exit_code=1)  # every user error is 1 here; argparse's usage errors are 2


if __name__ == "__main__":
    sys.exit(main())
