"""The typed run configuration: one pydantic model per concern, loaded from YAML; the one place for defaults.

Errors name the bad field (`training.lr: Input should be a valid number`), and unknown keys are refused so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from r3v_ray.prompts import CAPTION_PROMPTS


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The supported model families (r3v_ray/models/families.py, which tests/test_families.py keeps equal to this list).
ModelFamily = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"]


class TinyModelConfig(_Strict):
    """Sizes for the locally built tiny model: TinySpec's defaults, repeated so that loading a config never
    imports torch (tests/test_config.py keeps them equal)."""

    family: ModelFamily = "qwen2_vl"  # the tiny model's architecture, tokenizer and chat template
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head size 32: the smallest vLLM's CPU attention supports (see TinySpec)
    num_kv_heads: int = 2
    vision_depth: int = 1
    vision_embed_dim: int = 32
    vision_heads: int = 2
    vocab_size: int = 768
    initializer_range: float = Field(0.2, gt=0.0)  # weight init std; see TinySpec
    seed: int = 0

    @model_serializer(mode="wrap")
    def _family_once_set(self, handler):
        # Written out (config.yaml, the digest, the tiny model's build stamp) only when it is not qwen2_vl, the
        # family of every tiny model before families existed: their runs resume and their directories are reused.
        data = handler(self)
        if data.get("family") == "qwen2_vl":
            del data["family"]
        return data


class ModelConfig(_Strict):
    # A local directory or a hub name. With `tiny` set, the tiny model is built into this directory if missing.
    path: str = "runs/tiny-model"
    tiny: TinyModelConfig | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    min_pixels: int | None = None
    max_pixels: int | None = None


class TaskConfig(_Strict):
    name: str = "synthetic"
    # Where the task's files are. For `synthetic` they are generated there if missing.
    data_dir: str = "runs/synthetic-data"
    params: dict[str, Any] = Field(default_factory=dict)  # task-specific options
    num_train: int = Field(200, ge=1)  # synthetic only: how many questions to generate
    num_test: int = Field(100, ge=1)
    data_seed: int = 0
    max_train: int | None = Field(None, ge=1)  # cap on questions read (any task)
    max_test: int | None = Field(None, ge=1)


class DecodingConfig(_Strict):
    """How candidate rationales are drawn (docs/design.md section 1, step 1: temperature 0.9, top_p 0.95, top_k 50):
    one set of defaults for training samples, evaluation candidates and served candidates."""

    temperature: float = Field(0.9, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0)
    max_new_tokens: int = Field(384, ge=1)


class SamplingConfig(DecodingConfig):
    engine: Literal["hf", "vllm"] = "hf"
    num_samples: int = Field(3, ge=1)  # S rationales per training question per round
    batch_size: int = Field(8, ge=1)  # questions per engine call
    max_prompt_tokens: int = Field(2048, ge=16)  # longer prompts are skipped and counted, never truncated
    tensor_parallel_size: int = Field(1, ge=1)  # vllm only
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)  # vllm only
    # vllm only: the engine's context (prompt + answer), None for the model's own. A prompt that leaves no room
    # to answer in it is skipped and counted, like one over max_prompt_tokens.
    max_model_len: int | None = Field(None, ge=16)
    enforce_eager: bool | None = None  # vllm only: None = eager on CPU (faster start-up), compiled on GPU
    cpu_kv_cache_gib: float = Field(1.0, gt=0.0)  # vllm on CPU only: each engine's KV cache


class ReflectConfig(_Strict):
    use_refine: bool = True
    use_select: bool = True
    select_variant: Literal["fixed", "mixed"] = "fixed"
    select_n: int = Field(3, ge=2)  # the fixed variant's candidate count
    mixed_min_n: int = Field(2, ge=2)
    mixed_max_n: int = Field(6, ge=2)
    min_rationale_chars: int = Field(20, ge=0)  # shorter positives are not used: too short to hold reasoning
    warmup_cot: int | None = Field(None, ge=0)  # teacher rationales in the warm-up set (None: all that exist)
    # Perception examples per training image in the warm-up set: the task's caption under this many of the caption
    # prompts. They stand in for a pretrained VLM's perception, which a randomly initialised tiny model lacks.
    warmup_captions: int = Field(0, ge=0, le=len(CAPTION_PROMPTS))
    seed: int = 0


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # Names of the Linear layers to adapt (outside a frozen vision tower); None: the model family's own
    # (r3v_ray/models/families.py: the attention projections, and Qwen3.5's linear-attention ones too).
    target_modules: list[str] | None = None


class TrainingConfig(_Strict):
    alpha: float = Field(1.0, ge=0.0)  # weight of L_REF
    beta: float = Field(1.0, ge=0.0)  # weight of L_SEL
    loss_reduction: Literal["mixture", "per_term"] = Field(
        "mixture",
        description="How the terms are averaged (r3v_ray/training/loss.py). mixture: one token mean over all "
        "assistant tokens of the batch, each weighted by its term's alpha/beta, as the authors' code trains the "
        "shuffled mixture (the paper's numbers). per_term: each term's own token mean, the paper's formula read "
        "literally (a short select target then weighs ~45x a rationale token).")
    finetune: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze_vision: bool = True
    init_from: Literal["base", "previous"] = "base"  # paper default: every round starts from the base model
    epochs: float = Field(3.0, gt=0.0)
    lr: float = Field(3e-5, gt=0.0)
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    global_batch_size: int = Field(64, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    max_seq_len: int = Field(2048, ge=16)
    zero_stage: Literal[0, 1, 2, 3] = 2
    bf16: bool = False
    gradient_clipping: float = Field(1.0, ge=0.0)
    max_failures: int = Field(1, ge=0)  # Ray Train FailureConfig: restarts from the last checkpoint
    checkpoint_every_steps: int = Field(50, ge=0)  # resumable checkpoints reported to Ray Train (0: final only)
    checkpoints_to_keep: int = Field(2, ge=1)
    seed: int = 0


class EvalConfig(DecodingConfig):
    n: int = Field(3, ge=1)  # the headline N of Oracle@N, Majority@N, Select@N
    # Redefined only to refuse 0 (N greedy candidates would be one candidate N times); keep the default in step.
    temperature: float = Field(0.9, gt=0.0)
    select: bool = True  # compute Select@N
    zero_shot: bool = True  # round 0 also records the base model's zero-shot CoT accuracy
    seed: int = 1234
    # The test-time scaling curve (r3v_ray/evaluation.py): one sampling pass draws `num_candidates` per question;
    # Oracle@n and Majority@n are scored for every n up to it on the first n candidates, Select@n (a self-select
    # pass each) for every n listed here. Unset (the default): only the headline N, at today's cost.
    scaling_ns: list[int] | None = None
    num_candidates: int | None = Field(None, ge=1)  # candidates drawn per question (unset: max of n and scaling_ns)

    @model_validator(mode="after")
    def _scaling_within_the_candidates(self) -> "EvalConfig":
        drawn = self.candidates
        if self.n > drawn:
            raise ValueError(f"evaluation.n ({self.n}) is above evaluation.num_candidates ({drawn}), the "
                             "candidates drawn per question")
        low = 2 if self.select else 1  # choosing among fewer than 2 candidates is not a selection
        for n in self.scaling_ns or []:
            if n < low:
                raise ValueError(f"evaluation.scaling_ns: {n} is below {low}" + (
                    " (Select@n needs at least 2 candidates to choose from)" if self.select else ""))
            if n > drawn:
                raise ValueError(f"evaluation.scaling_ns: {n} is above evaluation.num_candidates ({drawn}), the "
                                 "candidates drawn per question")
        return self

    @property
    def candidates(self) -> int:
        """Candidates drawn per question: num_candidates, else the largest n asked for."""
        return self.num_candidates or max([self.n, *(self.scaling_ns or [])])

    @property
    def scaling(self) -> bool:
        """Whether the evaluation scores the curve (eval.json's "scaling") besides the headline N."""
        return self.scaling_ns is not None or self.num_candidates is not None

    @property
    def select_ns(self) -> list[int]:
        """The n of the self-select passes: the headline N and the curve's, ascending (none without select)."""
        return sorted({self.n, *(self.scaling_ns or [])}) if self.select else []


class ResourcesConfig(_Strict):
    num_samplers: int = Field(2, ge=1)  # engine actors in the Ray Data pool
    cpus_per_sampler: float = Field(1.0, ge=0.0)
    gpus_per_sampler: float = Field(0.0, ge=0.0)
    num_train_workers: int = Field(2, ge=1)
    cpus_per_train_worker: float = Field(1.0, ge=0.0)
    gpus_per_train_worker: float = Field(0.0, ge=0.0)
    torch_threads: int = Field(1, ge=1)  # per actor/worker: 1 on small CPU machines avoids oversubscription
    # Cluster placement (cluster.yaml): extra Ray resources and a GPU model (Ray's accelerator_type, e.g. "A10G")
    # per sampler actor / train worker, so the autoscaler starts the right node type. Empty: no constraint.
    sampler_resources: dict[str, float] = Field(default_factory=dict)
    sampler_accelerator_type: str | None = None
    train_worker_resources: dict[str, float] = Field(default_factory=dict)
    train_accelerator_type: str | None = None

    @model_validator(mode="after")
    def _custom_resources_only(self) -> "ResourcesConfig":
        # CPU/GPU have their own fields; Ray refuses them inside `resources` only once a job is running.
        for name in ("sampler_resources", "train_worker_resources"):
            if {"CPU", "GPU"} & set(getattr(self, name)):
                raise ValueError(f"resources.{name}: CPU and GPU go in the cpus_/gpus_ fields, not here")
        return self


class ServeConfig(DecodingConfig):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    num_replicas: int | Literal["auto"] = 1
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0.0)
    cpus_per_replica: float = Field(1.0, ge=0.0)
    gpus_per_replica: float = Field(0.0, ge=0.0)
    default_n: int = Field(3, ge=1)
    max_n: int = Field(8, ge=1)
    max_image_bytes: int = Field(4 * 1024 * 1024, ge=1)
    max_new_tokens_limit: int = Field(1024, ge=1)
    # Request defaults and limits (r3v_ray/serving/parsing.py); the decoding defaults (DecodingConfig, per
    # candidate unless the request asks otherwise) are evaluation's.
    default_strategy: Literal["self_select", "majority", "first"] = "self_select"
    select_max_new_tokens: int = Field(64, ge=1)  # the greedy self-select answer ("Answer: X") is short
    # Size limits, each checked before anything is tokenized: the body (while it is read), JSON nesting, each text.
    max_question_chars: int = Field(8000, ge=1)
    max_choice_chars: int = Field(1000, ge=1)  # each answer choice
    max_prompt_chars: int = Field(16000, ge=1)  # the question and all its choices together
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    image_pixel_budget: int | None = Field(
        None, ge=1,
        description="Pixels a larger image is reduced to while it is decoded, in the ingress, before it reaches a "
        "replica (at least this many are kept; the model's processor does the final resize). Unset: the model's "
        "own budget, model.max_pixels or else the checkpoint's image processor (read where the app is built; a "
        "checkpoint under a URI is not read, and its images are kept as sent).")
    max_concurrent_decodes: int = Field(
        2, ge=1,
        description="Request bodies parsed and images decoded at once per ingress replica, off its event loop; "
        "others wait their turn. Bounds the ingress's memory: each decode holds at most one image of "
        "max_image_pixels at full size.")
    max_choices: int = Field(26, ge=1)
    max_json_depth: int = Field(32, ge=2)  # nesting of arrays and objects in a request body
    # Slow clients (r3v_ray/serving/parsing.py BodySlots): bodies are received under a deadline and a cap.
    body_timeout_s: float = Field(
        30.0, gt=0.0,
        description="Seconds a request body may take to arrive whole (counted from the request's start); a slower "
        "one is answered 408 and its connection closed.")
    max_body_readers: int = Field(
        192, ge=1,
        description="Request bodies received at once per ingress replica; one more is answered 503 at once. Below "
        "ingress_max_ongoing_requests, so that slow uploads never take every slot from /healthz and answers.")
    max_body_readers_per_client: int = Field(
        16, ge=1,
        description="Request bodies received at once from one client address (as the ingress sees it); one more is "
        "answered 429 at once.")
    # Access: with keys set, every route but /healthz needs `Authorization: Bearer <key>` (401 otherwise). Keys also
    # come from the file named by the environment variable R3V_SERVE_API_KEYS_FILE (one a line; r3v_ray/serving/
    # auth.py). Never written out: not into a run's config.yaml, nor into the Serve application's settings.
    api_keys: list[str] = Field(default_factory=list, exclude=True, repr=False)
    docs: bool = Field(
        False,
        description="Serve the /docs page (Swagger UI, behind the keys when there are keys). Off by default: its "
        "scripts and styles come from a public CDN, so on a network without internet the page is blank. "
        "/openapi.json, the schema it shows, is served either way.")
    # Sampler deployment: engine, dynamic batching across concurrent requests, health checks.
    engine: Literal["hf", "vllm"] = "hf"
    torch_threads: int = Field(1, ge=1)
    max_batch_size: int = Field(16, ge=1)
    # A request that finds the engine idle starts at once (no batching wait); those arriving during an engine call form
    # the next batch. Under load (the last call carried several requests and ended less than this ago) a batch waits
    # up to this long for as many requests as that call carried (r3v_ray/serving/batching.py EngineQueue).
    batch_wait_timeout_s: float = Field(0.02, ge=0.0)
    max_ongoing_requests: int = Field(32, ge=1)
    health_check_period_s: float = Field(10.0, gt=0.0)
    # Ingress deployment: HTTP parsing only, so it takes no CPU away from the model replicas by default.
    ingress_replicas: int = Field(1, ge=1)
    ingress_cpus: float = Field(0.0, ge=0.0)
    # Above Serve's default of 5 so the sampler can batch, and above max_body_readers so that slow uploads leave room.
    ingress_max_ongoing_requests: int = Field(256, ge=1)
    app_name: str = "r3v"
    route_prefix: str = "/"
    model_name: str | None = None  # the id in /v1/models; derived from the run and round when unset
    # Cluster placement of the sampler replicas (see resources.sampler_resources): extra Ray resources, GPU model.
    replica_resources: dict[str, float] = Field(default_factory=dict)
    accelerator_type: str | None = None

    @model_validator(mode="after")
    def _limits_consistent(self) -> "ServeConfig":
        if self.default_n > self.max_n:
            raise ValueError("serve.default_n must be <= serve.max_n")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("serve.max_new_tokens must be <= serve.max_new_tokens_limit")
        if self.min_replicas > self.max_replicas:
            raise ValueError("serve.min_replicas must be <= serve.max_replicas")
        if self.max_body_readers >= self.ingress_max_ongoing_requests:
            raise ValueError("serve.max_body_readers must be < serve.ingress_max_ongoing_requests")
        if {"CPU", "GPU"} & set(self.replica_resources):
            raise ValueError("serve.replica_resources: CPU and GPU go in cpus_per_replica/gpus_per_replica")
        return self


class StorageConfig(_Strict):
    # Local path or a pyarrow filesystem URI (s3://bucket/prefix, gs://...). On a cluster every node must reach it;
    # inside a submitted Ray job a relative path is refused (it would land in Ray's copy of the working directory).
    root: str = "runs"
    # Each node's copies of checkpoints, models and task data that live under a URI (r3v_ray/cache.py): fetched once
    # per content, least recently used removed beyond the cap. `~` is the home directory of the node's Ray worker.
    cache_dir: str = "~/.cache/r3v-ray/storage"
    cache_max_gb: float = Field(100.0, gt=0.0)


class MonitoringConfig(_Strict):
    """How a run shows itself while it runs (r3v_ray/console.py, r3v_ray/training/progress.py); changes no round's
    outputs, so it is not part of the config digest."""

    progress_bar: bool = True  # one bar per training on rank 0: steps, loss per term, rate, time left
    log_every_steps: int = Field(0, ge=0)  # also a line of the losses every N steps (0: none; --verbose: every step)
    tensorboard: bool = True  # event files under <run>/tensorboard (r3v_ray/tensorboard_log.py)


class RunConfig(_Strict):
    name: str = "demo"
    method: Literal["r3v", "star"] = "r3v"  # star: positives only (alpha = beta = 0, no refine/select data)
    rounds: int = Field(3, ge=0)
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reflect: ReflectConfig = Field(default_factory=ReflectConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @model_validator(mode="after")
    def _method_switch(self) -> "RunConfig":
        # STaR is the same loop with the reflection terms switched off: one switch, no copied code.
        if self.method == "star":
            object.__setattr__(self.reflect, "use_refine", False)
            object.__setattr__(self.reflect, "use_select", False)
            object.__setattr__(self.training, "alpha", 0.0)
            object.__setattr__(self.training, "beta", 0.0)
        if self.reflect.mixed_min_n > self.reflect.mixed_max_n:
            raise ValueError("reflect.mixed_min_n must be <= reflect.mixed_max_n")
        return self

    @property
    def run_dir(self) -> str:
        return f"{self.storage.root.rstrip('/')}/{self.name}"

    # Sections that change no round's outputs: how many rounds, where and on what the stages run, serving, and how
    # the run reports itself.
    _NOT_HASHED = ("name", "rounds", "resources", "serve", "storage", "monitoring")
    _HASHED_ONCE_SET = (("evaluation", "scaling_ns"), ("evaluation", "num_candidates"))

    def digest(self) -> str:
        """A stable hash of what decides a round's outputs (manifests record it to refuse resuming under a
        changed config). Scheduling and storage settings are left out, and local paths are made absolute, so
        extending `rounds` or resuming a local run as cluster jobs is not a config change."""
        return hashlib.sha256(json.dumps(self.hashed(), sort_keys=True).encode()).hexdigest()[:16]

    def hashed(self) -> dict:
        """What `digest` hashes: the config less scheduling and storage, with local paths made absolute."""
        data = self.model_dump(mode="json", exclude=set(self._NOT_HASHED))
        # Fields added after runs existed are hashed only once set, so those runs keep their digest and resume.
        for section, key in self._HASHED_ONCE_SET:
            if data[section][key] is None:
                del data[section][key]
        # LoRA's family default is hashed as the list it replaced (the Qwen2 families' own): those runs resume.
        if data["training"]["lora"]["target_modules"] is None:
            data["training"]["lora"]["target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj"]
        # task.data_dir is always a location; model.path is one when the tiny model is built there or it
        # exists here (otherwise it is a hub name such as Qwen/Qwen2-VL-7B-Instruct).
        local = {"data_dir": True, "path": self.model.tiny is not None or os.path.exists(self.model.path)}
        for section, key in (("model", "path"), ("task", "data_dir")):
            if "://" not in data[section][key] and local[key]:
                data[section][key] = os.path.abspath(data[section][key])
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"{where}: {err['msg']}")
    return f"{source}: invalid config:\n  " + "\n  ".join(lines)


def config_from_dict(data: dict[str, Any] | None, source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config; `overrides` are `a.b=value` strings (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return config_from_dict(data, str(path))
