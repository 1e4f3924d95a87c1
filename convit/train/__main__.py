"""`python -m convit.train --job jobs/convit_tiny.yaml [--set key=value ...]`: one training process.

In a pod the entrypoint is `python -m convit.cluster` (convit/cluster/supervisor.py), which starts this command
once per process it plans: with MS_ROLE=MS_SCHED it is the MindSpore scheduler, otherwise a worker that trains
(a plain run outside a cluster trains alone). Started directly as a pod's command it supervises the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from convit.cluster import contract
from convit.errors import cli_boundary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m convit.train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--job",
        default=os.environ.get("CONVIT_JOB_FILE", contract.JOB_FILE),
        help="recipe name from jobs/ or a job file (YAML or JSON)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a job value, e.g. train.lr=1e-3 (repeatable)",
    )
    parser.add_argument("--max-steps", type=int, help="stop after this many global steps")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--data", help="override data.uri")
    parser.add_argument("--output", help="override checkpoint.uri")
    parser.add_argument("--log-format", choices=["text", "json"], help="override logging.format")
    parser.add_argument("--resume", default="", help="resume from this checkpoint URI instead of the job's own")
    parser.add_argument("--device", choices=["CPU", "Ascend"], help="default: $CONVIT_DEVICE or CPU")
    parser.add_argument("--pynative", action="store_true", help="PyNative mode (debugging) instead of graph mode")
    return parser.parse_args(argv)


def overrides_of(args: argparse.Namespace) -> list[str]:
    sets = list(args.overrides)
    for flag, key in (
        ("max_steps", "train.max_steps"),
        ("epochs", "train.epochs"),
        ("data", "data.uri"),
        ("output", "checkpoint.uri"),
        ("log_format", "logging.format"),
    ):
        value = getattr(args, flag)
        if value is not None:
            sets.append(f"{key}={value}")
    return sets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return cli_boundary(lambda: _main(args, sys.argv[1:] if argv is None else argv))  # a bad job file: exit 2


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    from convit.jobspec import load_job

    spec = load_job(args.job, overrides_of(args))
    role = os.environ.get(contract.ENV_ROLE)
    from convit.cluster.supervisor import supervise, supervises

    if supervises():  # started as a pod's command (the image runs `python -m convit.cluster`, the same thing)
        return supervise(argv)
    from convit.train.runtime import init_runtime

    if role == contract.ROLE_SCHED:
        init_runtime(args.device)  # the scheduler serves the cluster inside init() until workers finish
        return 0
    runtime = init_runtime(args.device, pynative=args.pynative)
    if runtime.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    from convit.train.loop import Trainer

    return Trainer(spec, runtime, resume_uri=args.resume).run()


if __name__ == "__main__":
    sys.exit(main())
