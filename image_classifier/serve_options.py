"""The command line of `python app.py --serve`: the models on Ray Serve replicas. Ray-free, so that parsing
the options never imports Ray (image_classifier/ray_serve.py does, when --serve asks for it)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeOptions:
    """How the model replicas are sized and scaled."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    """(min, max) replicas, scaled by Serve on load; `replicas` is ignored then."""
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    replica_threads: int | None = None
    max_queued: int = 32
    """Requests the model deployment holds waiting before it turns more away at once."""
    target_ongoing: float = 2.0
    """Autoscaling's target of requests in flight per replica."""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "the models on Ray Serve replicas (pip install -r requirements-ray.txt)"
    )
    group.add_argument(
        "--serve",
        action="store_true",
        help="run the models on Ray Serve: a local Ray, or RAY_ADDRESS's cluster",
    )
    group.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (default $RAY_ADDRESS)")
    group.add_argument("--replicas", type=int, default=1, metavar="N", help="model replicas (default 1)")
    group.add_argument(
        "--autoscale",
        metavar="MIN,MAX",
        help="let Serve scale the model replicas between MIN and MAX on load",
    )
    group.add_argument("--replica-cpus", type=float, default=1.0, metavar="C", help="CPUs per replica (1)")
    group.add_argument("--replica-gpus", type=float, default=0.0, metavar="G", help="GPUs per replica (0)")
    group.add_argument(
        "--replica-threads", type=int, metavar="T", help="inference threads per replica (default: its CPUs)"
    )


def serve_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ServeOptions | None:
    """The options --serve asked for (None without it); `parser.error` on numbers that can't work."""
    serve_only = ("ray_address", "autoscale", "replica_threads")
    if not args.serve:
        if any(getattr(args, name) is not None for name in serve_only) or args.replicas != 1:
            parser.error("--ray-address, --replicas, --autoscale and --replica-* go with --serve")
        return None
    autoscale = None
    if args.autoscale:
        try:
            low, high = (int(part) for part in args.autoscale.split(","))
        except ValueError:
            parser.error("--autoscale takes MIN,MAX, e.g. 1,4")
        if not 0 < low <= high:
            parser.error("--autoscale MIN,MAX needs 0 < MIN <= MAX")
        autoscale = (low, high)
    if args.replicas < 1 or args.replica_cpus <= 0 or args.replica_gpus < 0:
        parser.error("--replicas must be at least 1, --replica-cpus more than 0, --replica-gpus 0 or more")
    if args.replica_threads is not None and args.replica_threads < 1:
        parser.error("--replica-threads must be at least 1")
    return ServeOptions(
        replicas=args.replicas,
        autoscale=autoscale,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
        replica_threads=args.replica_threads,
        max_queued=args.queue_size,
    )
