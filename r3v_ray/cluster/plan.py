"""`r3v plan`: the resources each stage of a config will ask Ray for, computed without starting anything.

Stages run one after another inside a round (sampler actors are released before training starts), so a cluster
needs room for the largest stage, not for their sum; the Serve app is separate and runs beside them.
Given a cluster.yaml, each stage is also matched to the node types that can hold one of its units, with the number
of such nodes its units need.
"""

from __future__ import annotations

import math
from typing import Any

from r3v_ray.config import RunConfig
from r3v_ray.cluster.resources import Request, sampler_request, serve_replica_request, train_worker_request

_EPS = 1e-9


def _rounds(first: int, last: int) -> str:
    if first > last:
        return "-"
    return str(first) if first == last else f"{first}..{last}"


def _stage(name: str, rounds: str, role: str, units: int, req: Request | None, note: str = "") -> dict[str, Any]:
    per_unit = req.bundle() if req else {}
    return {
        "stage": name,
        "rounds": rounds,
        "role": role,
        "units": units,
        "per_unit": per_unit,
        "total": {k: round(v * units, 6) for k, v in per_unit.items()},
        "note": note,
    }


def plan(cfg: RunConfig) -> list[dict[str, Any]]:
    """One dict per stage: stage, rounds, role, units, per_unit and total resources (Ray resource maps), note."""
    r, s = cfg.resources, cfg.serve
    k = cfg.rounds
    sampler = sampler_request(cfg)
    replicas = s.max_replicas if s.num_replicas == "auto" else s.num_replicas
    return [
        _stage("sample", _rounds(1, k), "sampler actors (Ray Data actor pool)", r.num_samplers, sampler,
               f"{cfg.sampling.engine} engine; released before training"),
        _stage("build", _rounds(0, k), "driver job (pure Python)", 0, None,
               "runs in the round's driver job, which asks for no resources"),
        _stage("train", _rounds(0, k), "Ray Train workers (DeepSpeed, placement group PACK)", r.num_train_workers,
               train_worker_request(cfg), f"ZeRO-{cfg.training.zero_stage}; controller takes 0 CPUs"),
        _stage("eval", _rounds(0, k), "sampler actors (Ray Data actor pool)", r.num_samplers, sampler,
               _eval_note(cfg.evaluation)),
        _stage("serve", "after", "Serve sampler replicas", replicas, serve_replica_request(cfg),
               f"{s.engine} engine; " + (f"autoscaled {s.min_replicas}..{s.max_replicas}" if s.num_replicas == "auto"
                                         else "fixed replicas")),
        _stage("serve-ingress", "after", "Serve HTTP ingress", s.ingress_replicas, Request(s.ingress_cpus),
               f"{s.host}:{s.port}"),
    ]


def _eval_note(ev) -> str:
    passes = f"greedy + {ev.candidates} samples" if ev.scaling else "greedy + N samples"
    if ev.scaling and ev.select_ns:
        passes += " + self-select at n = " + ", ".join(map(str, ev.select_ns))
    return passes + (" (+ zero-shot in round 0)" if ev.zero_shot else "")


def warnings(cfg: RunConfig) -> list[str]:
    """Requests that cannot work as configured (found before a cluster is paid for)."""
    out = []
    tp = cfg.sampling.tensor_parallel_size
    # Without GPUs a tp=1 vLLM engine runs on CPU (vLLM's CPU build, r3v_ray/engines/settings.py).
    if cfg.sampling.engine == "vllm" and tp > 1 and cfg.resources.gpus_per_sampler < tp:
        out.append(f"sampling.engine vllm with tensor_parallel_size={tp} needs resources.gpus_per_sampler >= {tp}")
    if cfg.serve.engine == "vllm" and tp > 1 and cfg.serve.gpus_per_replica < tp:
        out.append(f"serve.engine vllm with tensor_parallel_size={tp} needs serve.gpus_per_replica >= {tp}")
    if cfg.training.bf16 and cfg.resources.gpus_per_train_worker == 0:
        out.append("training.bf16 without GPUs: DeepSpeed on CPU trains in float32")
    return out


# Values of the shipped configs that stand for the user's own (configs/*-geoqa.yaml, cluster.yaml).
PLACEHOLDER_BUCKETS = ("my-bucket",)


def to_fill_in(cfg: RunConfig, cluster: dict | None = None) -> list[str]:
    """What still stands for the user's own values, and the paths every node must see: placeholders in the config
    (the example bucket) and, with a cluster file, node types without an AMI or an instance profile, and the
    config's paths on a local disk."""
    from r3v_ray.cluster import preflight
    from r3v_ray.run import store

    out = []
    places = preflight.locations(cfg)
    for key, value in places.items():
        if any(marker in value for marker in PLACEHOLDER_BUCKETS):
            out.append(f"{key} {value} is the example's placeholder bucket: name a bucket of yours "
                       f"(--set {key}=s3://YOUR-BUCKET/prefix)")
    if cluster is None:
        return out
    for key, value in places.items():
        if not store.is_uri(value):
            out.append(f"{key} {value} is a path on a disk: every node of the cluster reads it at that same path, so "
                       "it must be a shared file system mounted there on every node (or give a URI, s3://...)")
    head = cluster.get("head_node_type")
    remote = [k for k, v in places.items() if store.is_uri(v)]
    for name, spec in (cluster.get("available_node_types") or {}).items():
        node = spec.get("node_config") or {}
        if name != head and "ImageId" not in node:
            out.append(f"cluster node type {name}: no ImageId; Ray's default AMI may lack the NVIDIA driver vLLM needs: "
                       "set a current Deep Learning AMI of your region (the lines marked CHANGE)")
        if name != head and remote and "IamInstanceProfile" not in node:
            out.append(f"cluster node type {name}: no IamInstanceProfile; its nodes need credentials for "
                       f"{', '.join(remote)} (an instance profile, or AWS_* variables in the environment Ray starts "
                       "with)")
    return out


# -- node types (cluster.yaml) ------------------------------------------------------------------------------


def node_types(cluster: dict) -> dict[str, dict[str, Any]]:
    """{name: {"resources", "max_workers", "head"}} from a cluster launcher config (its declared resources)."""
    head = cluster.get("head_node_type")
    out = {}
    for name, spec in (cluster.get("available_node_types") or {}).items():
        out[name] = {
            "resources": {k: float(v) for k, v in (spec.get("resources") or {}).items()},
            "max_workers": 0 if name == head else int(spec.get("max_workers", cluster.get("max_workers", 0))),
            "head": name == head,
        }
    return out


def units_per_node(per_unit: dict[str, float], node: dict[str, float]) -> int:
    """How many units of a request one node holds (0: the node type cannot run it)."""
    needed = {k: v for k, v in per_unit.items() if v > 0}
    if not needed:
        return 10**9  # asks for nothing: fits anywhere
    return min(math.floor(node.get(k, 0.0) / v + _EPS) for k, v in needed.items())


def place(stages: list[dict[str, Any]], types: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stage with "nodes": {type: nodes its units need} over the node types that can hold one unit."""
    out = []
    for st in stages:
        nodes = {}
        if st["units"] > 0 and any(v > 0 for v in st["per_unit"].values()):
            for name, t in types.items():
                per_node = units_per_node(st["per_unit"], t["resources"])
                if per_node > 0:
                    nodes[name] = math.ceil(st["units"] / per_node)
        out.append(dict(st, nodes=nodes))
    return out


def check_placement(placed: list[dict[str, Any]], types: dict[str, dict[str, Any]]) -> list[str]:
    """Problems with a placement: a stage no node type can run, more nodes than max_workers, or a choice left to
    the autoscaler between several worker types (pin it with an accelerator type or custom resource)."""
    out = []
    for st in placed:
        if st["units"] == 0 or not any(v > 0 for v in st["per_unit"].values()):
            continue
        if not st["nodes"]:
            out.append(f"{st['stage']}: no node type can hold {_fmt(st['per_unit'])}")
            continue
        if any(types[n]["head"] and c == 1 for n, c in st["nodes"].items()):
            continue  # the head alone has room: no worker node is needed
        workers = {n: c for n, c in st["nodes"].items() if not types[n]["head"]}
        for name, count in workers.items():
            if count > types[name]["max_workers"] and len(workers) == 1:
                out.append(f"{st['stage']}: needs {count} {name} nodes, max_workers is {types[name]['max_workers']}")
        if len(workers) > 1:
            out.append(f"{st['stage']}: fits several worker types ({', '.join(workers)}); the autoscaler picks one")
    return out


def _fmt(res: dict[str, float]) -> str:
    if not res:
        return "-"
    return ", ".join(f"{k}={v:g}" for k, v in res.items())


def format_plan(cfg: RunConfig, placed: list[dict[str, Any]], notes: list[str]) -> str:
    """A plain-text table of the plan (what `r3v plan` prints)."""
    with_nodes = any("nodes" in st for st in placed)
    rows = [("stage", "rounds", "units", "per unit", "total") + (("node types (nodes)",) if with_nodes else ())
            + ("role / note",)]
    for st in placed:
        nodes = (", ".join(f"{n} x{c}" for n, c in st["nodes"].items()) or "-",) if with_nodes else ()
        rows.append((st["stage"], st["rounds"], str(st["units"]), _fmt(st["per_unit"]), _fmt(st["total"])) + nodes
                    + (f"{st['role']}; {st['note']}" if st["note"] else st["role"],))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"plan for run {cfg.name!r} ({cfg.method}, rounds 0..{cfg.rounds}); nothing is started"]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    round_stages = [st for st in placed if not st["stage"].startswith("serve")]
    peak = _peak(round_stages)
    lines.append(f"peak of one round (stages run one at a time): {_fmt(peak)}")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _peak(stages: list[dict[str, Any]]) -> dict[str, float]:
    peak: dict[str, float] = {}
    for st in stages:
        for k, v in st["total"].items():
            peak[k] = max(peak.get(k, 0.0), v)
    return peak


def peak_nodes(placed: list[dict[str, Any]], types: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Worker nodes per type for the largest round stage, counting stages that only one worker type can run."""
    peak: dict[str, int] = {}
    for st in placed:
        if st["stage"].startswith("serve"):
            continue
        workers = {n: c for n, c in st["nodes"].items() if not types[n]["head"]}
        if len(workers) == 1:
            (name, count), = workers.items()
            peak[name] = max(peak.get(name, 0), count)
    return peak


def report(cfg: RunConfig, cluster: dict | None = None) -> tuple[str, dict[str, Any]]:
    """(text, json-able dict) for `r3v plan`: the stages, and with a cluster config their node types."""
    stages = plan(cfg)
    notes = warnings(cfg)
    peak: dict[str, int] = {}
    if cluster is not None:
        types = node_types(cluster)
        stages = place(stages, types)
        notes += check_placement(stages, types)
        peak = peak_nodes(stages, types)
    fill_in = to_fill_in(cfg, cluster)
    text = format_plan(cfg, stages, notes)
    if peak:
        text += "\nworker nodes at the peak of a round: " + ", ".join(f"{n} x{c}" for n, c in peak.items())
    text += "".join(f"\nfill in: {line}" for line in fill_in)
    return text, {"run": cfg.name, "rounds": cfg.rounds, "stages": stages, "peak_nodes": peak, "notes": notes,
                  "fill_in": fill_in}
