"""`python -m convit.cluster [--module MODULE] --job /etc/convit/job.json ...`: the container's entrypoint.

It decides from the pod's environment (contract.py) what the pod runs: in a training pod it becomes the pod
supervisor (supervisor.py), which starts `python -m convit.train` once per NPU, plus the MindSpore scheduler
where this pod hosts it; as the AscendJob's Scheduler pod, or anywhere outside a pod, it is the trainer itself.

`--module convit.evaluate` (first on the command line; `launcher submit --evaluate` renders it) runs the
evaluation of a checkpoint the same way instead of training. Every other argument is the module's own
(`python -m convit.train --help`, `python -m convit.evaluate --help`).
"""

from __future__ import annotations

import sys

from convit.errors import UsageError, cli_boundary

TRAIN = "convit.train"
EVALUATE = "convit.evaluate"


def split_module(args: list[str]) -> tuple[str, list[str]]:
    """(module, its arguments) from the entrypoint's arguments: a leading `--module M` or `--module=M`."""
    from convit.cluster.supervisor import MODULES

    module, rest = TRAIN, list(args)
    if rest and rest[0] == "--module":
        if len(rest) < 2:
            raise UsageError("--module needs a value: " + " or ".join(MODULES))
        module, rest = rest[1], rest[2:]
    elif rest and rest[0].startswith("--module="):
        module, rest = rest[0].split("=", 1)[1], rest[1:]
    if module not in MODULES:
        raise UsageError(f"--module {module!r}: expected one of {', '.join(MODULES)}")
    return module, rest


def _check_job(module: str, args: list[str]) -> None:
    """Load the job file once here: a bad one fails the pod once, not once per NPU."""
    from convit.jobspec import load_job

    if module == EVALUATE:
        from convit.evaluate import parse_args as eval_args

        parsed = eval_args(args)
        load_job(parsed.job, [*parsed.overrides, *([f"data.uri={parsed.data}"] if parsed.data else [])])
        return
    from convit.train.__main__ import overrides_of, parse_args

    parsed = parse_args(args)
    load_job(parsed.job, overrides_of(parsed))


def main(argv: list[str] | None = None) -> int:
    return cli_boundary(lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    from convit.cluster.supervisor import supervise, supervises

    module, args = split_module(argv)
    if supervises():
        _check_job(module, args)
        return supervise(args, module=module)
    if module == EVALUATE:
        from convit.evaluate import main as evaluate

        return evaluate(args)
    from convit.train.__main__ import main as train

    return train(args)


if __name__ == "__main__":
    sys.exit(main())
