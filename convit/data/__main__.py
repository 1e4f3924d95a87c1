"""`python -m convit.data make-sample|prepare`: build demo data sets and sharded copies of ImageFolder trees."""

from __future__ import annotations

import argparse
import logging
import sys

from convit.errors import ConvitError, cli_boundary

SEED_MAX = 2**32 - 1  # numpy's seed range, as train.seed's
MAX_COUNT = 100_000  # classes, and images per class, of a generated sample (model.num_classes' bound)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convit.data")
    sub = parser.add_subparsers(dest="command", required=True)
    sample = sub.add_parser("make-sample", help="write a small generated ImageNet-format data set")
    sample.add_argument("--dst", required=True, help="s3://bucket/prefix or file:///path")
    sample.add_argument("--classes", type=int, default=10)
    sample.add_argument("--per-class", type=int, default=20)
    sample.add_argument("--val-per-class", type=int, default=5)
    sample.add_argument("--seed", type=int, default=0)
    prep = sub.add_parser("prepare", help="convert an ImageFolder tree into shards plus an index")
    prep.add_argument("--src", required=True)
    prep.add_argument("--dst", required=True)
    prep.add_argument("--shard-size", default="256MB")
    prep.add_argument("--seed", type=int, default=0, help="seed of the order samples are written in")
    prep.add_argument("--quiet", action="store_true")
    for command in (sample, prep):  # the job spec's storage settings, for data tools run outside a job
        command.add_argument("--endpoint", help="S3 endpoint URL, as storage.endpoint (default: $AWS_ENDPOINT_URL_S3)")
        command.add_argument("--region", help="S3 region, as storage.region")
        command.add_argument(
            "--addressing-style", choices=["auto", "path", "virtual"], help="as storage.addressing_style"
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return cli_boundary(lambda: _run(args))


def _storage_env(args: argparse.Namespace) -> None:
    """--endpoint/--region/--addressing-style, checked as the job spec checks them, into the environment the S3
    client reads (convit/storage/s3.py): credentials still come only from the environment."""
    import os

    from pydantic import ValidationError

    from convit.jobspec.schema import StorageSpec

    given = {"endpoint": args.endpoint, "region": args.region, "addressing_style": args.addressing_style}
    try:
        storage = StorageSpec.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConvitError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from None
    if args.endpoint is not None:
        os.environ["AWS_ENDPOINT_URL_S3"] = storage.endpoint
    if args.region is not None:
        os.environ["AWS_REGION"] = storage.region
    if args.addressing_style is not None:
        os.environ["CONVIT_S3_ADDRESSING_STYLE"] = storage.addressing_style


def _run(args: argparse.Namespace) -> int:
    from convit.storage import open_storage

    _storage_env(args)
    if not 0 <= args.seed <= SEED_MAX:
        raise ConvitError(f"--seed must be in [0, {SEED_MAX}]")
    if args.command == "make-sample":
        for flag in ("classes", "per_class"):
            if getattr(args, flag) <= 0:
                raise ConvitError(f"--{flag.replace('_', '-')} must be positive")
        if args.val_per_class < 0:
            raise ConvitError("--val-per-class must not be negative")
        for flag in ("classes", "per_class", "val_per_class"):
            if getattr(args, flag) > MAX_COUNT:
                raise ConvitError(f"--{flag.replace('_', '-')} must be at most {MAX_COUNT}")
        from convit.data.sample import make_sample

        written = make_sample(open_storage(args.dst), args.classes, args.per_class, args.val_per_class, args.seed)
        print(f"wrote {written} images ({args.classes} classes) to {args.dst}")
    else:
        from convit.data.prepare import parse_size, prepare

        size = parse_size(args.shard_size)
        src = open_storage(args.src)
        src.check_root()
        counts = prepare(src, open_storage(args.dst), size, args.seed, args.quiet)
        print(f"prepared {args.dst}: " + ", ".join(f"{k} {v} samples" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
