"""`python -m launcher`: submit, render, status, logs, wait, suspend, resume, list and delete ConViT training (and
evaluation) jobs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import TextIO

from convit.jobspec import JobSpec, load_job
from convit.jobspec.schema import is_dns_label
from launcher.backends.base import Backend, JobStatus
from launcher.client import TrainingClient
from launcher.errors import LauncherError
from launcher.serving import SERVING_BACKENDS
from launcher.workloads import BACKENDS, KINDS

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


MAX_SECONDS = 10 * 365 * 86_400  # --timeout: ten years is "no timeout" for any practical purpose
MAX_INTERVAL = 3600.0
MAX_PODS = 4096  # cluster.pods' bound in convit/jobspec/schema.py: --rank is a pod index below it


def _number(text: str, what: str, low: float, high: float, *, low_open: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        raise argparse.ArgumentTypeError(f"{text!r}: {what} must be a finite number in {bracket}{low:g}, {high:g}]")
    return value


def seconds(text: str) -> float:
    """--timeout: a finite, non-negative number of seconds (not nan, inf or negative)."""
    return _number(text, "seconds", 0.0, MAX_SECONDS)


def interval(text: str) -> float:
    """--interval: a finite, positive number of seconds."""
    return _number(text, "the interval", 0.0, MAX_INTERVAL, low_open=True)


def namespace(text: str) -> str:
    """-n: a DNS-1123 label of at most 63 characters (a trailing newline is not one)."""
    if not is_dns_label(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace (a DNS-1123 label of at most 63 characters)")
    return text


def pod_index(text: str) -> int:
    """--rank: a pod index, 0 to MAX_PODS - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < MAX_PODS:
        raise argparse.ArgumentTypeError(f"{text!r}: a pod index is 0 to {MAX_PODS - 1}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("job", metavar="JOB", help="recipe name from jobs/ (e.g. convit_small_plus) or a YAML file")
        p.add_argument("--name", help="job name (DNS-1035 label: starts with a letter); default: the recipe's")
        p.add_argument(
            "--pods",
            type=int,
            help="pods (servers of 8 NPUs); the peak LR follows the global batch (train.reference_batch)",
        )
        p.add_argument("-n", "--namespace", help="Kubernetes namespace")
        p.add_argument("--image", help="training image")
        p.add_argument("--data", help="dataset URI (s3://... or file:///...)")
        p.add_argument("--output", help="checkpoint URI (s3://... or file:///...)")
        p.add_argument(
            "--backend",
            choices=BACKENDS,
            help="workload kind: " + "; ".join(f"{name}: {kind.summary}" for name, kind in KINDS.items()),
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any job value, e.g. train.lr=1e-3 (repeatable)",
        )
        p.add_argument(
            "--evaluate",
            action="store_true",
            help="evaluate --weights on the validation split (python -m convit.evaluate) instead of training; "
            "the job is named <name>-eval",
        )
        p.add_argument("--weights", metavar="URI", help="with --evaluate: a MindCV .ckpt or our checkpoint (directory)")

    def wait_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=seconds, metavar="S", help="give up waiting after S seconds (exit 124)")
        p.add_argument(
            "--interval", type=interval, metavar="S", help="seconds between status checks (default 5, local 1)"
        )

    submit = sub.add_parser("submit", help="validate, render and create a training (or evaluation) job")
    job_args(submit)
    submit.add_argument("--dry-run", action="store_true", help="validate and (on a cluster) dry-run on the server")
    submit.add_argument("-f", "--follow", action="store_true", help="stream rank 0's log until the job ends")
    submit.add_argument(
        "--wait", action="store_true", help="block until the job ends: exit 0 if it succeeded, 1 if not, 124 on timeout"
    )
    wait_args(submit)
    submit.add_argument("--local", action="store_true", help="run on this machine's CPU instead of Kubernetes")
    render = sub.add_parser("render", help="print the manifests submit would create")
    job_args(render)

    def name_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME")
        p.add_argument("-n", "--namespace", type=namespace, default="default")
        p.add_argument("--local", action="store_true", help="a job started with submit --local")
        p.add_argument("--context", help="kubeconfig context")

    status = sub.add_parser("status", help="job phase, pods, restarts and latest progress")
    name_args(status)
    logs = sub.add_parser("logs", help="stream a job's log")
    name_args(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep following, across pod restarts")
    which = logs.add_mutually_exclusive_group()
    which.add_argument("--rank", type=pod_index, default=0, help="pod index to show (default 0)")
    which.add_argument("--all", action="store_true", help="all pods, each line prefixed with [pod-i]")
    lst = sub.add_parser("list", help="training jobs in a namespace")
    lst.add_argument("-n", "--namespace", type=namespace, default="default")
    lst.add_argument("--local", action="store_true")
    lst.add_argument("--context")
    wait = sub.add_parser("wait", help="block until a job ends: exit 0 if it succeeded, 1 if not, 124 on timeout")
    name_args(wait)
    wait_args(wait)
    suspend = sub.add_parser("suspend", help="stop a job's pods gracefully (rank 0 checkpoints), keeping the job")
    name_args(suspend)
    resume = sub.add_parser("resume", help="restart a suspended job's pods from the newest checkpoint")
    name_args(resume)
    plot = sub.add_parser("plot", help="loss/LR and top-1/top-5 against steps from rank 0's log, as a PNG")
    name_args(plot)
    plot.add_argument("-o", "--output", metavar="PNG", help="where to write the PNG (default: NAME-curves.png)")
    plot.add_argument(
        "--from-tensorboard",
        metavar="URI",
        help="the whole run across restarts from its TensorBoard files (the job's checkpoint.uri) instead of the log",
    )
    serve = sub.add_parser(
        "serve",
        help="serve trained weights over HTTP: a Deployment and Service or a KServe InferenceService (or --local)",
    )
    serve.add_argument("job", metavar="JOB", help="the recipe (or job file) the weights were trained with")
    serve.add_argument("--weights", required=True, metavar="URI", help="our checkpoint, a MindCV .ckpt or an .onnx")
    serve.add_argument("--name", help="the server's name (default: <job name>-serve)")
    serve.add_argument("-n", "--namespace", type=namespace, help="Kubernetes namespace")
    serve.add_argument("--image", help="the image (the training image serves too)")
    serve.add_argument("--replicas", type=int, help="server pods (default 1)")
    serve.add_argument("--npus", type=int, help="NPUs per server pod (default 0: the CPU)")
    serve.add_argument("--backend", choices=SERVING_BACKENDS, help="deployment (default) or kserve")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    serve.add_argument("--render", action="store_true", help="print the manifests instead of creating them")
    serve.add_argument("--dry-run", action="store_true", help="validate (on a cluster: a server-side dry run)")
    serve.add_argument("--local", action="store_true", help="serve on this machine (a local process)")
    serve.add_argument("--context", help="kubeconfig context")
    delete = sub.add_parser("delete", help="delete a job and the objects it created")
    name_args(delete)
    return parser


EVAL_SUFFIX = "-eval"
WAIT_TIMEOUT = 124  # exit code of `wait` (and `submit --wait`) on timeout, as timeout(1) has it


def spec_of(args: argparse.Namespace) -> JobSpec:
    # Flag values are taken literally (JSON-quoted), unlike --set values, which are YAML scalars.
    overrides = [
        f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None
    ]
    spec = load_job(args.job, [*overrides, *args.overrides])
    if getattr(args, "evaluate", False) and not spec.name.endswith(EVAL_SUFFIX):
        # An evaluation is a job of its own, next to the training job it evaluates: `<name>-eval`.
        spec = load_job(args.job, [*overrides, *args.overrides, f"name={json.dumps(spec.name + EVAL_SUFFIX)}"])
    return spec


def evaluate_of(args: argparse.Namespace) -> str | None:
    """The weights URI of an evaluation job, None for training; a usage error when the flags disagree."""
    if getattr(args, "weights", None) and not args.evaluate:
        raise LauncherError("--weights is for evaluation jobs: add --evaluate (training starts from model.pretrained)")
    if args.evaluate and not args.weights:
        raise LauncherError("--evaluate needs --weights URI (a MindCV .ckpt, or our checkpoint directory)")
    return str(args.weights) if args.evaluate else None


def final_line(status: JobStatus) -> str:
    return f"job {status.name} {status.phase.lower()}" + (f": {status.result}" if status.result else "")


def wait_for(client: TrainingClient, name: str, args: argparse.Namespace, say: Callable[[str], None]) -> int:
    interval = args.interval or (1.0 if getattr(args, "local", False) else 5.0)
    status = client.wait(name, poll_seconds=interval, timeout=args.timeout)
    if not status.finished:
        say(f"job {name} still {status.phase.lower()} after {args.timeout:g}s: timed out waiting")
        return WAIT_TIMEOUT
    say(final_line(status))
    return 0 if status.phase == "Succeeded" else 1


def scaling_note(args: argparse.Namespace, spec: JobSpec) -> str | None:
    """One line on what --pods does to the global batch and the peak LR (MindCV's linear rule)."""
    if args.pods is None:
        return None
    recipe = spec_of(argparse.Namespace(**{**vars(args), "pods": None}))
    batch = spec.train.step_batch * spec.cluster.world_size
    recipe_batch = recipe.train.step_batch * recipe.cluster.world_size
    head = f"--pods {args.pods}: global batch {batch} (recipe {recipe_batch}), "
    if not spec.train.reference_batch:
        return head + f"peak LR {spec.train.peak_lr(batch):.2e} unchanged (train.reference_batch 0: no scaling)"
    return head + (
        f"peak LR {spec.train.peak_lr(batch):.2e} (recipe {recipe.train.peak_lr(recipe_batch):.2e} at "
        f"{recipe_batch}; linear rule, train.reference_batch {spec.train.reference_batch})"
    )


def check_rank(status: JobStatus, rank: int) -> None:
    """A rank beyond the job's pods is an error, not an empty log (known once the job's pods exist)."""
    indices = {pod.index for pod in status.pods}
    if indices and rank > max(indices):
        raise LauncherError(f"job {status.namespace}/{status.name} has no pod {rank}: its pods are 0 to {max(indices)}")


def plot_job(client: TrainingClient | None, args: argparse.Namespace, say: Callable[[str], None]) -> int:
    from pathlib import Path

    from launcher.plot import draw, points, save_png, tensorboard_curves
    from launcher.progress import curves

    if args.from_tensorboard:
        found = tensorboard_curves(args.from_tensorboard)
        if not found.steps:
            raise LauncherError(f"{args.from_tensorboard}: no training curves under tensorboard/ (yet)")
    else:
        assert client is not None
        found = curves(client.logs(args.name, follow=False, rank=0))
        if not found.steps:
            raise LauncherError(f"job {args.namespace}/{args.name}: no progress lines in rank 0's log yet")
    path = Path(args.output or f"{args.name}-curves.png")
    fig = draw(found, f"{args.name}: {len(found.steps)} logged steps")
    save_png(fig, path)
    drawn = points(fig)
    say(
        f"wrote {path}: loss and lr at {drawn['loss']} steps ({found.steps[0]}-{found.steps[-1]}), "
        f"top-1/top-5 at {drawn['top-1']} validations"
    )
    return 0


def backend_of(args: argparse.Namespace, namespace: str) -> Backend:
    if getattr(args, "local", False):
        from launcher.backends.local import LocalBackend

        return LocalBackend()
    from launcher.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(namespace, context=getattr(args, "context", None))


SERVE_SUFFIX = "-serve"
SERVE_FLAGS = {"weights": "serve.weights", "replicas": "serve.replicas", "npus": "serve.npus",
               "backend": "serve.backend", "namespace": "cluster.namespace", "image": "cluster.image"}  # fmt: skip


def serve_command(args: argparse.Namespace, say: Callable[[str], None], out: TextIO) -> int:
    """`launcher serve JOB --weights URI`: the server of those weights (serve.* of the job spec), named
    `<job name>-serve` unless --name says otherwise, as its manifests, on the cluster or on this machine."""
    from launcher.render import render_objects, render_yaml

    overrides = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in SERVE_FLAGS.items()
                 if getattr(args, flag) is not None]  # fmt: skip
    spec = load_job(args.job, [*overrides, *args.overrides])
    name = args.name or (spec.name + SERVE_SUFFIX)
    spec = load_job(args.job, [*overrides, *args.overrides, f"name={json.dumps(name)}"])
    objects = render_objects(spec)
    if args.render:
        out.write(render_yaml(objects))
        return 0
    client = TrainingClient(backend_of(args, spec.cluster.namespace))
    client.submit(spec, dry_run=args.dry_run)
    s = spec.serve
    where = "--local" if args.local else f"-n {spec.cluster.namespace}"
    device = f"{s.npus} NPU(s)" if s.npus and not args.local else "the CPU"
    if args.dry_run:
        say(f"dry run: server {name} ({s.backend}, {s.replicas} replica(s)) is valid; nothing was created")
        return 0
    replicas = 1 if args.local else s.replicas
    say(f"serving {s.weights} as {name}: {spec.model.name}, {replicas} replica(s) on {device}")
    say(f"  status:  python -m launcher status {name} {where}   (the endpoint, once ready)")
    say(f"  logs:    python -m launcher logs {name} {where} -f")
    say(f"  stop:    python -m launcher delete {name} {where}")
    return 0


def notes_of(args: argparse.Namespace, spec: JobSpec) -> list[str]:
    """What the user should know before the job runs: the LR scaling, and how the workload kind treats the spec."""
    scaling = scaling_note(args, spec)
    kind = KINDS[spec.cluster.backend].notes(spec)
    return ([scaling] if scaling else []) + [f"note: {line}" for line in kind]


def run(argv: list[str] | None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    if args.command == "render":
        from launcher.render import render_objects, render_yaml

        spec = spec_of(args)
        objects = render_objects(spec, evaluate=evaluate_of(args))
        for note in notes_of(args, spec):
            print(note, file=sys.stderr, flush=True)  # stderr: the YAML on stdout stays clean
        out.write(render_yaml(objects))
        return 0
    if args.command == "serve":
        return serve_command(args, say, out)
    if args.command == "submit":
        spec = spec_of(args)
        KINDS[spec.cluster.backend].check(spec)  # refused before anything is said or created
        for note in notes_of(args, spec):
            say(note)
        weights = evaluate_of(args)
        client = TrainingClient(backend_of(args, spec.cluster.namespace))
        name = client.submit(spec, dry_run=args.dry_run, evaluate=weights)
        where = "--local" if args.local else f"-n {spec.cluster.namespace}"
        what = "evaluation job" if weights else "job"
        if args.dry_run:
            say(
                f"dry run: {what} {name} ({spec.cluster.backend}, {spec.cluster.pods} pods x "
                f"{spec.cluster.npus_per_pod} NPUs) is valid; nothing was created"
            )
            return 0
        say(
            f"submitted {what} {name}: {spec.model.name}, {spec.cluster.pods} pod(s) x {spec.cluster.npus_per_pod} "
            f"{'CPU workers' if args.local else 'NPUs'}" + (f", weights {weights}" if weights else "")
        )
        if not (args.follow or args.wait):
            say(f"  follow:  python -m launcher logs {name} {where} -f")
            say(f"  wait:    python -m launcher wait {name} {where}")
            say(f"  status:  python -m launcher status {name} {where}")
            say(f"  delete:  python -m launcher delete {name} {where}")
            return 0
        if args.follow:
            for line in client.logs(name, follow=True, rank=0):
                say(line)
        return wait_for(client, name, args, say)
    if args.command == "plot" and args.from_tensorboard:  # the files alone: no cluster, no local job needed
        return plot_job(None, args, say)
    client = TrainingClient(backend_of(args, args.namespace))
    if args.command == "status":
        st = client.status(args.name)
        say(f"job {st.namespace}/{st.name}: {st.phase}")
        if st.admission:
            say(f"  kueue: {st.admission}")
        if st.metrics:
            say(f"  metrics: {st.metrics}")
        if st.endpoint:
            say(f"  endpoint: {st.endpoint}")
        for pod in st.pods:
            say(
                f"  pod {pod.index} {pod.name}: {pod.phase}, restarts {pod.restarts}"
                + (f", node {pod.node}" if pod.node else "")
                + (f"; said: {pod.message}" if pod.message else "")
            )
        if st.result:
            say(f"  result: {st.result}")
        else:
            say(f"  progress: {st.latest_progress or 'none yet'}")
        return 0
    if args.command == "wait":
        return wait_for(client, args.name, args, say)
    if args.command == "suspend":
        say(client.suspend(args.name))
        return 0
    if args.command == "resume":
        say(client.resume(args.name))
        return 0
    if args.command == "logs":
        if not args.all and args.rank > 0:
            check_rank(client.status(args.name), args.rank)
        for line in client.logs(args.name, follow=args.follow, rank=None if args.all else args.rank):
            say(line)
        return 0
    if args.command == "plot":
        return plot_job(client, args, say)
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
