"""`python -m launcher`: submit, render, status, logs, list and delete ConViT training jobs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from convit.jobspec import JobSpec, load_job
from launcher.backends.base import Backend
from launcher.client import TrainingClient

# submit/render flags -> job keys (the same keys `--set` takes)
FLAG_KEYS = {
    "name": "name",
    "pods": "cluster.pods",
    "namespace": "cluster.namespace",
    "image": "cluster.image",
    "data": "data.uri",
    "output": "checkpoint.uri",
    "backend": "cluster.backend",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("job", metavar="JOB", help="recipe name from jobs/ (e.g. convit_small_plus) or a YAML file")
        p.add_argument("--name", help="job name (DNS-1123 label); default: the recipe's")
        p.add_argument("--pods", type=int, help="pods (servers of 8 NPUs)")
        p.add_argument("-n", "--namespace", help="Kubernetes namespace")
        p.add_argument("--image", help="training image")
        p.add_argument("--data", help="dataset URI (s3://... or file:///...)")
        p.add_argument("--output", help="checkpoint URI (s3://... or file:///...)")
        p.add_argument("--backend", choices=["job", "volcano", "ascendjob"], help="workload kind")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any job value, e.g. train.lr=1e-3 (repeatable)",
        )

    submit = sub.add_parser("submit", help="validate, render and create a training job")
    job_args(submit)
    submit.add_argument("--dry-run", action="store_true", help="validate and (on a cluster) dry-run on the server")
    submit.add_argument("-f", "--follow", action="store_true", help="stream rank 0's log until the job ends")
    submit.add_argument("--local", action="store_true", help="run on this machine's CPU instead of Kubernetes")
    render = sub.add_parser("render", help="print the manifests submit would create")
    job_args(render)

    def name_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME")
        p.add_argument("-n", "--namespace", default="default")
        p.add_argument("--local", action="store_true", help="a job started with submit --local")
        p.add_argument("--context", help="kubeconfig context")

    status = sub.add_parser("status", help="job phase, pods, restarts and latest progress")
    name_args(status)
    logs = sub.add_parser("logs", help="stream a job's log")
    name_args(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep following, across pod restarts")
    which = logs.add_mutually_exclusive_group()
    which.add_argument("--rank", type=int, default=0, help="pod index to show (default 0)")
    which.add_argument("--all", action="store_true", help="all pods, each line prefixed with [pod-i]")
    lst = sub.add_parser("list", help="training jobs in a namespace")
    lst.add_argument("-n", "--namespace", default="default")
    lst.add_argument("--local", action="store_true")
    lst.add_argument("--context")
    delete = sub.add_parser("delete", help="delete a job and the objects it created")
    name_args(delete)
    return parser


def spec_of(args: argparse.Namespace) -> JobSpec:
    # Flag values are taken literally (JSON-quoted), unlike --set values, which are YAML scalars.
    overrides = [
        f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None
    ]
    return load_job(args.job, [*overrides, *args.overrides])


def backend_of(args: argparse.Namespace, namespace: str) -> Backend:
    if getattr(args, "local", False):
        from launcher.backends.local import LocalBackend

        return LocalBackend()
    from launcher.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(namespace, context=getattr(args, "context", None))


def run(argv: list[str] | None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    if args.command == "render":
        from launcher.render import render_objects, render_yaml

        out.write(render_yaml(render_objects(spec_of(args))))
        return 0
    if args.command == "submit":
        spec = spec_of(args)
        client = TrainingClient(backend_of(args, spec.cluster.namespace))
        name = client.submit(spec, dry_run=args.dry_run)
        where = "--local" if args.local else f"-n {spec.cluster.namespace}"
        if args.dry_run:
            say(
                f"dry run: job {name} ({spec.cluster.backend}, {spec.cluster.pods} pods x "
                f"{spec.cluster.npus_per_pod} NPUs) is valid; nothing was created"
            )
            return 0
        say(
            f"submitted job {name}: {spec.model.name}, {spec.cluster.pods} pod(s) x {spec.cluster.npus_per_pod} "
            f"{'CPU workers' if args.local else 'NPUs'}"
        )
        if not args.follow:
            say(f"  follow:  python -m launcher logs {name} {where} -f")
            say(f"  status:  python -m launcher status {name} {where}")
            say(f"  delete:  python -m launcher delete {name} {where}")
            return 0
        for line in client.logs(name, follow=True, rank=0):
            say(line)
        status = client.wait(name, poll_seconds=1.0)
        say(f"job {name} {status.phase.lower()}")
        return 0 if status.phase == "Succeeded" else 1
    client = TrainingClient(backend_of(args, args.namespace))
    if args.command == "status":
        st = client.status(args.name)
        say(f"job {st.namespace}/{st.name}: {st.phase}")
        for pod in st.pods:
            say(
                f"  pod {pod.index} {pod.name}: {pod.phase}, restarts {pod.restarts}"
                + (f", node {pod.node}" if pod.node else "")
            )
        say(f"  progress: {st.latest_progress or 'none yet'}")
        return 0
    if args.command == "logs":
        for line in client.logs(args.name, follow=args.follow, rank=None if args.all else args.rank):
            say(line)
        return 0
    if args.command == "list":
        jobs = client.list()
        if not jobs:
            say("no training jobs")
        for job in jobs:
            say(f"{job.name:<40} {job.phase:<10} {job.kind}")
        return 0
    if args.command == "delete":
        for item in client.delete(args.name):
            say(f"deleted {item}")
        return 0
    raise AssertionError(args.command)
