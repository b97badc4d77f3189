"""What each role asks Ray for, derived from the config only: the one place sampling, training, serving and
`r3v plan` read resource requests from, so the plan printed is the request made.

On a cluster these requests are what the autoscaler sees: a pending sampler actor or train-worker bundle makes it
start a node type whose `resources` (cluster.yaml) can hold it. An accelerator type becomes Ray's
`accelerator_type:<name>` resource (0.001 per request, 1 per node), which only nodes of that GPU model offer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from r3v_ray.config import RunConfig

ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_AMOUNT = 0.001  # what Ray itself requests for `accelerator_type=`


@dataclass(frozen=True)
class Request:
    """One actor's or worker's resources."""

    cpus: float
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom resources
    accelerator_type: str | None = None

    def bundle(self) -> dict[str, float]:
        """The request as one resource map (the way the autoscaler and a placement group see it)."""
        out = {"CPU": float(self.cpus)}
        if self.gpus:
            out["GPU"] = float(self.gpus)
        out.update({k: float(v) for k, v in self.resources.items()})
        if self.accelerator_type:
            out[ACCELERATOR_PREFIX + self.accelerator_type] = ACCELERATOR_AMOUNT
        return out


def sampler_request(cfg: RunConfig) -> Request:
    r = cfg.resources
    return Request(r.cpus_per_sampler, r.gpus_per_sampler, dict(r.sampler_resources), r.sampler_accelerator_type)


def train_worker_request(cfg: RunConfig) -> Request:
    r = cfg.resources
    return Request(r.cpus_per_train_worker, r.gpus_per_train_worker, dict(r.train_worker_resources),
                   r.train_accelerator_type)


def serve_replica_request(cfg: RunConfig) -> Request:
    s = cfg.serve
    return Request(s.cpus_per_replica, s.gpus_per_replica, dict(s.replica_resources), s.accelerator_type)


def sampler_remote_args(cfg: RunConfig) -> dict[str, Any]:
    """Keyword arguments for Dataset.map_batches (the engine-actor pool)."""
    return _remote_args(sampler_request(cfg))


def serve_actor_options(cfg: RunConfig) -> dict[str, Any]:
    """`ray_actor_options` of the Serve sampler deployment."""
    return _remote_args(serve_replica_request(cfg))


def scaling_config_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Keyword arguments for ray.train.ScalingConfig (PACK: DeepSpeed workers on as few nodes as possible)."""
    req = train_worker_request(cfg)
    per_worker = {"CPU": float(req.cpus), **{k: float(v) for k, v in req.resources.items()}}
    if req.gpus:
        per_worker["GPU"] = float(req.gpus)
    kw: dict[str, Any] = dict(num_workers=cfg.resources.num_train_workers, use_gpu=req.gpus > 0,
                              resources_per_worker=per_worker, placement_strategy="PACK")
    if req.accelerator_type:
        kw["accelerator_type"] = req.accelerator_type
    return kw


def _remote_args(req: Request) -> dict[str, Any]:
    args: dict[str, Any] = {"num_cpus": req.cpus, "num_gpus": req.gpus}
    if req.resources:
        args["resources"] = dict(req.resources)
    if req.accelerator_type:
        args["accelerator_type"] = req.accelerator_type
    return args
