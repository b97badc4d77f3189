"""Composing the Serve application: sampler deployment (replicas/autoscaling from ServeConfig) bound into the
ingress. `app_builder` is the import path for `serve run`:

    serve run r3v_ray.serving.app:app_builder checkpoint=runs/demo/round-002/checkpoint
    serve run r3v_ray.serving.app:app_builder run_dir=runs/demo round=2 config=configs/demo.yaml
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from r3v_ray.run import store
from r3v_ray.config import ConfigError, RunConfig, config_from_dict, load_config
from r3v_ray.engines.settings import engine_kwargs as settings_for
from r3v_ray.cluster.resources import serve_actor_options
from r3v_ray.serving import auth
from r3v_ray.serving import checkpoint as ckpt
from r3v_ray.serving.deployments import Ingress, Sampler


def engine_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Constructor arguments of the serving engine (r3v_ray/engines/settings.py decides them)."""
    return settings_for(cfg, "serve")


def sampler_options(cfg: RunConfig) -> dict[str, Any]:
    s = cfg.serve
    opts: dict[str, Any] = {
        "ray_actor_options": serve_actor_options(cfg),  # CPUs, GPUs, custom resources, GPU model
        "max_ongoing_requests": s.max_ongoing_requests,
        "health_check_period_s": s.health_check_period_s,
    }
    if s.num_replicas == "auto":
        opts["num_replicas"] = "auto"
        opts["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = s.num_replicas
    return opts


MODEL_ALIAS = "r3v"  # what a user of the openai client naturally sends; answered as the served model


def model_info(cfg: RunConfig, served: ckpt.ServedModel) -> dict[str, Any]:
    """What GET /v1/models reports: the model id, the other names a chat request may give it (the run's name and
    "r3v", docs/cluster.md), the checkpoint and the round it came from."""
    model_id = cfg.serve.model_name or served.model_id()
    return {
        "id": model_id,
        "aliases": [a for a in dict.fromkeys([cfg.name, MODEL_ALIAS]) if a != model_id],
        "checkpoint": served.checkpoint,
        "round": served.round,
        "run_dir": served.run_dir,
        "task": cfg.task.name,
        "engine": cfg.serve.engine,
    }


def image_budget(cfg: RunConfig, served: ckpt.ServedModel) -> int | None:
    """serve.image_pixel_budget, else the model's: model.max_pixels, else the local checkpoint's image processor."""
    if cfg.serve.image_pixel_budget or cfg.model.max_pixels:
        return cfg.serve.image_pixel_budget or cfg.model.max_pixels
    if "://" in served.checkpoint:
        return None
    from r3v_ray.models.processor import image_pixel_budget

    return image_pixel_budget(served.checkpoint)


def build_app(cfg: RunConfig, served: ckpt.ServedModel) -> Application:
    s = cfg.serve
    sampler = Sampler.options(**sampler_options(cfg)).bind(
        served.checkpoint, s.engine, engine_kwargs(cfg), s.max_batch_size, s.batch_wait_timeout_s,
        cfg.storage.model_dump(mode="json"), cfg.task.name, cfg.task.params,
    )
    settings = {
        # leaves serve.api_keys out (exclude=True): only digests travel
        "serve": {**s.model_dump(mode="json"), "image_pixel_budget": image_budget(cfg, served)},
        "api_key_digests": [auth.digest(k) for k in auth.load_keys(s)],
        "model": model_info(cfg, served),
        "select_max_new_tokens": cfg.evaluation.select_budget,
    }
    return Ingress.options(
        num_replicas=s.ingress_replicas,
        max_ongoing_requests=s.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": s.ingress_cpus},
    ).bind(sampler, settings)


def load_run_config(config: str | None = None, run_dir: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """An explicit config file wins; else the run directory's own config.yaml; else the defaults."""
    if config:
        return load_config(config, overrides)
    if run_dir and store.exists(store.join(run_dir, "config.yaml")):
        import yaml

        data = yaml.safe_load(store.read_text(store.join(run_dir, "config.yaml"))) or {}
        return _with_overrides(data, overrides, f"{run_dir}/config.yaml")
    return _with_overrides({}, overrides, "<defaults>")


def _with_overrides(data: dict, overrides: list[str] | None, source: str) -> RunConfig:
    import yaml

    from r3v_ray.config import _set_dotted  # the same `a.b=value` rule as load_config

    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return config_from_dict(data, source)


def prepare(
    checkpoint: str | None = None,
    run_dir: str | None = None,
    round_: int | None = None,
    task: str | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[RunConfig, ckpt.ServedModel]:
    cfg = load_run_config(config, run_dir, overrides)
    if task:
        cfg.task.name = task
    served = ckpt.resolve(checkpoint, run_dir, round_)
    if "://" not in served.checkpoint:  # refused here, not by every replica Serve would start and restart
        from r3v_ray.models.families import family_of

        family_of(served.checkpoint)
    return cfg, served


def app_builder(args: dict[str, str]) -> Application:
    """`serve run r3v_ray.serving.app:app_builder key=value ...`; keys: checkpoint | run_dir [round], task,
    config, and any dotted config override (e.g. serve.max_n=4)."""
    args = dict(args)
    known = {k: args.pop(k, None) for k in ("checkpoint", "run_dir", "round", "task", "config")}
    overrides = [f"{k}={v}" for k, v in args.items()]
    round_ = int(known["round"]) if known["round"] not in (None, "") else None
    cfg, served = prepare(known["checkpoint"], known["run_dir"], round_, known["task"], known["config"], overrides)
    return build_app(cfg, served)
