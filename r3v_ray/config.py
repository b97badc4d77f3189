"""The typed run configuration: one pydantic model per concern, loaded from YAML; the one place for defaults.

Errors name the bad field (`training.lr: Input should be a valid number`), and unknown keys are refused so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# How many wordings of the perception prompt r3v_ray/method/prompts.py CAPTION_PROMPTS holds (reflect.warmup_captions
# draws that many at most; tests/test_layout.py keeps the two equal, so the config need not import the prompts).
CAPTION_WORDINGS = 6


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The supported model families (r3v_ray/models/families.py, which tests/test_families.py keeps equal to this list).
ModelFamily = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"]


class TinyPretrainConfig(_Strict):
    """Teach the tiny model perception and arithmetic once, before any round (r3v_ray/pipeline/pretrain.py): full
    fine-tuning, vision tower included, on the built-in task's images from a pool disjoint from the task's train and
    test questions. The result is cached beside model.path under a key of every setting that changes it, and every
    round (warm-up included) starts from it, so "restart from the base" no longer restarts perception."""

    num_images: int = Field(2000, ge=1, description="images in the pool (layouts among the task's questions are "
                            "drawn again)")
    captions: int = Field(2, ge=1, le=CAPTION_WORDINGS, description="counting captions per pool image, each "
                          "under a different caption prompt")
    counts: int = Field(0, ge=0, description="per pool image, statements of one to three colours' counts in a "
                        "random order, as rationales state them (\"Blue objects: 1. Red objects: 2.\"): captions "
                        "always list every colour in one order")
    arithmetic: int = Field(2000, ge=0, description="arithmetic examples in the rationales' own form "
                            "(\"2 + 3 = 5.\", \"4 is more than 2.\")")
    data_seed: int = Field(1, description="seed of the pool's images and arithmetic")
    epochs: float = Field(5.0, gt=0.0, description="passes over the pool")
    lr: float = Field(3e-3, gt=0.0, description="peak learning rate of the pretraining")


class TinyModelConfig(_Strict):
    """Sizes for the locally built tiny model (r3v_ray/models/tiny.py TinySpec takes its defaults from here, so
    loading a config never imports torch and the defaults live in one place)."""

    family: ModelFamily = Field("qwen2_vl", description="the tiny model's architecture, tokenizer and chat template")
    hidden_size: int = Field(64, ge=1, description="width of the language model")
    intermediate_size: int = Field(128, ge=1, description="width of the MLP")
    num_layers: int = Field(2, ge=1, description="language-model layers")
    num_heads: int = Field(2, ge=1, description="attention heads; head size hidden_size / num_heads = 32 is the smallest "
                           "vLLM's CPU attention supports (at 16 a vLLM engine fails at its first generate)")
    num_kv_heads: int = Field(2, ge=1, description="key/value heads")
    vision_depth: int = Field(1, ge=1, description="vision-tower layers")
    vision_embed_dim: int = Field(32, ge=1, description="vision-tower width")
    vision_heads: int = Field(2, ge=1, description="vision-tower attention heads")
    vocab_size: int = Field(768, ge=1, description="size of the locally trained tokenizer's vocabulary")
    initializer_range: float = Field(
        0.2, gt=0.0, description="weight init std. Hugging Face's 0.02 suits wide models; at width 64 it starts every "
        "attention logit near zero and the text-to-image attention sits on a long plateau (the model did not learn "
        "to count in 1,000 steps). At 2 heads of 32 a fresh model left that plateau of the red-object probe "
        "(tests/test_models.py) within 20-80 steps at 0.2 for seeds 0-3, and stayed on it for 100 steps at 0.1.")
    seed: int = Field(0, description="seed of the random initialisation")
    pretrain: TinyPretrainConfig | None = Field(None, description="unset: rounds start from the random model; set: "
                                                "from a base pretrained once on perception and arithmetic")


class ModelConfig(_Strict):
    """The base model every round trains from (docs/models.md)."""

    path: str = Field("runs/tiny-model", description="a local directory, a storage URI or a hub name; with `tiny` "
                      "set, the tiny model is built into this directory if it is missing")
    tiny: TinyModelConfig | None = Field(None, description="build a tiny random model here (tests, the demo)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype when loaded")
    min_pixels: int | None = Field(None, ge=1, description="the image processor's lower pixel budget (None: the "
                                   "checkpoint's own)")
    max_pixels: int | None = Field(None, ge=1, description="the image processor's upper pixel budget (None: the "
                                   "checkpoint's own)")


class TaskConfig(_Strict):
    """The benchmark and where its files are (docs/data.md)."""

    name: str = Field("synthetic", description="geoqa, tabmwp, chartqa, clevr_math, m3cot, generic or synthetic")
    data_dir: str = Field("runs/synthetic-data", description="where the task's files are (a path or a storage URI); "
                          "for `synthetic` they are generated there if missing")
    params: dict[str, Any] = Field(default_factory=dict, description="task-specific options (the built-in task: "
                                   "colors, grid, min_objects, max_objects, question_types, paths)")
    num_train: int = Field(200, ge=1, description="synthetic only: training questions to generate")
    num_test: int = Field(100, ge=1, description="synthetic only: test questions to generate")
    data_seed: int = Field(0, description="synthetic only: the seed the questions and images are drawn from")
    max_train: int | None = Field(None, ge=1, description="cap on training questions read (any task)")
    max_test: int | None = Field(None, ge=1, description="cap on test questions read (any task)")
    allow_external_images: bool = Field(
        False, description="read record images that resolve (after symlinks) outside data_dir and the task's own "
        "image_dir / image_cache_dir; off, such a record is skipped by name (docs/data.md)")
    max_image_pixels: int | None = Field(
        4096 * 4096, ge=1, description="skip a record whose image header says more pixels than this, before "
        "anything decodes it (default: serve.max_image_pixels' default, above Qwen2-VL's processor max_pixels of "
        "12,845,056, to which larger images are resized anyway); null: no limit (docs/data.md)")


class DecodingConfig(_Strict):
    """How candidate rationales are drawn (docs/method.md, step 1: temperature 0.9, top_p 0.95, top_k 50):
    one set of defaults for training samples, evaluation candidates and served candidates."""

    temperature: float = Field(0.9, ge=0.0, description="sampling temperature of a candidate rationale")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    top_k: int = Field(50, ge=0, description="top-k sampling (0: off)")
    max_new_tokens: int = Field(384, ge=1, description="token budget of one rationale")


class SamplingConfig(DecodingConfig):
    """Drawing the training questions' rationales each round (Ray Data over a pool of engine actors)."""

    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers' generate; vllm: vLLM (GPU, or its "
                                          "CPU build)")
    num_samples: int = Field(3, ge=1, description="S: rationales per training question per round")
    batch_size: int = Field(8, ge=1, description="questions per engine call")
    max_prompt_tokens: int = Field(2048, ge=16, description="longer prompts are skipped and counted, never "
                                   "truncated")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm only: GPUs per engine")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vllm only: share of a GPU's memory")
    max_model_len: int | None = Field(None, ge=16, description="vllm only: the engine's context (prompt + answer), "
                                      "None for the model's own; a prompt that leaves no room to answer is skipped "
                                      "and counted")
    enforce_eager: bool | None = Field(None, description="vllm only: None = eager on CPU (faster start-up), "
                                       "compiled on GPU")
    cpu_kv_cache_gib: float = Field(1.0, gt=0.0, description="vllm on CPU only: each engine's KV cache (GiB)")


class ReflectConfig(_Strict):
    """Building a round's training set from the sample pool (r3v_ray/method/reflect.py, docs/method.md step 3)."""

    use_refine: bool = Field(True, description="build self-refine examples (x, y- -> y+)")
    use_select: bool = Field(True, description="build self-select examples (x, candidates -> the gold answer)")
    select_variant: Literal["fixed", "mixed"] = Field(
        "fixed", description="fixed: select_n candidates per set; mixed: 2 to 6 (mixed_min_n..mixed_max_n), as "
        "the paper's test-time scaling model. A set holds only what the pool has for its question")
    select_n: int = Field(3, ge=2, description="the fixed variant's candidate count")
    mixed_min_n: int = Field(2, ge=2, description="the mixed variant's smallest set")
    mixed_max_n: int = Field(6, ge=2, description="the mixed variant's largest set")
    min_rationale_chars: int = Field(20, ge=0, description="shorter positives are not used: too short to hold "
                                     "reasoning")
    warmup_cot: int | None = Field(None, ge=0, description="teacher rationales in the warm-up set (None: all that "
                                   "exist)")
    warmup_captions: int = Field(
        0, ge=0, le=CAPTION_WORDINGS, description="perception examples per training image in the warm-up set: "
        "the task's caption under this many caption prompts; they stand in for a pretrained VLM's perception, which "
        "a randomly initialised tiny model lacks")
    seed: int = Field(0, description="seed of the candidate sets' draws and shuffles")


class LoraConfig(_Strict):
    """LoRA adapters (training.finetune: lora); the export merges them into the weights."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="adapter scaling numerator (scale alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapters' input")
    target_modules: list[str] | None = Field(
        None, description="names of the Linear layers to adapt (outside a frozen vision tower); None: the model "
        "family's own (r3v_ray/models/families.py: the attention projections, and Qwen3.5's linear-attention ones)")


class TrainingConfig(_Strict):
    """Fine-tuning each round (Ray Train + DeepSpeed; docs/method.md, the loss)."""

    alpha: float = Field(1.0, ge=0.0, description="weight of L_REF, the self-refine term")
    beta: float = Field(1.0, ge=0.0, description="weight of L_SEL, the self-select term")
    loss_reduction: Literal["mixture", "per_term"] = Field(
        "mixture",
        description="How the terms are averaged (r3v_ray/training/loss.py). mixture: one token mean over all "
        "assistant tokens of the batch, each weighted by its term's alpha/beta, as the authors' code trains the "
        "shuffled mixture (the paper's numbers). per_term: each term's own token mean, the paper's formula read "
        "literally (a short select target then weighs ~45x a rationale token).")
    finetune: Literal["full", "lora"] = Field("full", description="full: every weight outside a frozen vision "
                                              "tower; lora: adapters (training.lora)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings")
    freeze_vision: bool = Field(True, description="leave the vision tower (every parameter under `visual.`) as "
                                "it is. false: trained, also where a micro-batch has no image (a zero gradient); "
                                "with zero_stage 3 on several workers every example needs an image")
    init_from: Literal["base", "previous"] = Field("base", description="base: every round starts from the base "
                                                   "model (the paper); previous: from M(k-1)")
    epochs: float = Field(3.0, gt=0.0, description="passes over the round's training set")
    lr: float = Field(3e-5, gt=0.0, description="peak learning rate (AdamW, constant after warm-up)")
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0, description="share of the steps with a linear warm-up")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    global_batch_size: int = Field(64, ge=1, description="examples per optimizer step, over all workers")
    micro_batch_size: int = Field(4, ge=1, description="examples per forward pass per worker; gradients accumulate "
                                  "to the global batch")
    max_seq_len: int = Field(2048, ge=16, description="longer examples are skipped and counted, never truncated")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    bf16: bool = Field(False, description="train in bfloat16 (GPUs)")
    gradient_clipping: float = Field(1.0, ge=0.0, description="global gradient-norm clip")
    max_failures: int = Field(1, ge=0, description="Ray Train FailureConfig: restarts from the last checkpoint")
    checkpoint_every_steps: int = Field(50, ge=0, description="resumable checkpoints reported to Ray Train (0: the "
                                        "final one only)")
    checkpoints_to_keep: int = Field(2, ge=1, description="Ray Train checkpoints kept")
    seed: int = Field(0, description="seed of the data order")


class EvalConfig(DecodingConfig):
    """Evaluating every round's model on the test split (r3v_ray/pipeline/evaluate.py, docs/method.md step 5)."""

    n: int = Field(3, ge=1, description="the headline N of Oracle@N, Majority@N and Select@N")
    # Redefined only to refuse 0 (N greedy candidates would be one candidate N times); keep the default in step.
    temperature: float = Field(0.9, gt=0.0, description="sampling temperature of the N candidates (Test@1 is "
                               "greedy)")
    select: bool = Field(True, description="compute Select@N")
    zero_shot: bool = Field(True, description="round 0 also records the base model's zero-shot CoT accuracy")
    seed: int = Field(1234, description="seed of the candidates")
    scaling_ns: list[int] | None = Field(
        None, description="the test-time scaling curve: one pass draws num_candidates per question; Oracle@n and "
        "Majority@n are scored for every n up to it on the first n, Select@n (a self-select pass each) for every n "
        "listed here. Unset: only the headline N")
    num_candidates: int | None = Field(None, ge=1, description="candidates drawn per question (unset: the largest "
                                       "of n and scaling_ns)")
    select_max_new_tokens: int | None = Field(
        None, ge=1, description="token budget of the greedy self-select answer, in Select@N and in the served "
        "selection alike (one setting, so the endpoint answers what Select@N measured); unset: max_new_tokens")

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
    def select_budget(self) -> int:
        """Tokens of the self-select answer, in evaluation and in serving."""
        return self.select_max_new_tokens or self.max_new_tokens

    @property
    def select_ns(self) -> list[int]:
        """The n of the self-select passes: the headline N and the curve's, ascending (none without select)."""
        return sorted({self.n, *(self.scaling_ns or [])}) if self.select else []


class ResourcesConfig(_Strict):
    """What each stage asks Ray for (what `r3v plan` prints); changes no round's outputs."""

    num_samplers: int = Field(2, ge=1, description="engine actors in the Ray Data pool (sampling and evaluation)")
    cpus_per_sampler: float = Field(1.0, ge=0.0, description="CPUs per engine actor")
    gpus_per_sampler: float = Field(0.0, ge=0.0, description="GPUs per engine actor (> 0: a GPU engine)")
    num_train_workers: int = Field(2, ge=1, description="Ray Train workers (one DeepSpeed rank each)")
    cpus_per_train_worker: float = Field(1.0, ge=0.0, description="CPUs per train worker")
    gpus_per_train_worker: float = Field(0.0, ge=0.0, description="GPUs per train worker")
    torch_threads: int = Field(1, ge=1, description="torch threads per actor or worker: 1 on small CPU machines "
                               "avoids oversubscription")
    sampler_resources: dict[str, float] = Field(default_factory=dict, description="extra Ray resources per engine "
                                                "actor, so the autoscaler starts the right node type")
    sampler_accelerator_type: str | None = Field(None, description="GPU model per engine actor (Ray's "
                                                 "accelerator_type, e.g. A10G)")
    train_worker_resources: dict[str, float] = Field(default_factory=dict, description="extra Ray resources per "
                                                     "train worker")
    train_accelerator_type: str | None = Field(None, description="GPU model per train worker")

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
    """Where runs live (docs/run-directory.md, docs/cluster.md)."""

    root: str = Field("runs", description="a local path or a pyarrow filesystem URI (s3://bucket/prefix, gs://...); "
                      "on a cluster every node must reach it")
    cache_dir: str = Field("~/.cache/r3v-ray/storage", description="each node's copies of checkpoints, models and "
                           "task data under a URI (r3v_ray/run/cache.py), fetched once per content; `~` is the home "
                           "directory of the node's Ray worker")
    cache_max_gb: float = Field(100.0, gt=0.0, description="the cache's cap; least recently used entries go first")


class MonitoringConfig(_Strict):
    """How a run shows itself while it runs (r3v_ray/observe/console.py, r3v_ray/training/progress.py); changes no round's
    outputs, so it is not part of the config digest."""

    progress_bar: bool = Field(True, description="one bar per training on rank 0: steps, loss per term, rate, "
                               "time left")
    log_every_steps: int = Field(0, ge=0, description="also a line of the losses every N steps (0: none; --verbose: "
                                 "every step)")
    tensorboard: bool = Field(True, description="event files under <run>/tensorboard (r3v_ray/observe/tensorboard.py)")


# What a `method` other than r3v sets: STaR (Zelikman et al.) is R3V's loop on positives only.
METHOD_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "star": {"reflect": {"use_refine": False, "use_select": False}, "training": {"alpha": 0.0, "beta": 0.0}},
}


class RunConfig(_Strict):
    name: str = Field("demo", description="the run's directory under storage.root")
    method: Literal["r3v", "star"] = Field("r3v", description="star: positives only (alpha = beta = 0, no "
                                           "refine/select data); a preset that refuses a conflicting setting")
    rounds: int = Field(3, ge=0, description="K: self-training rounds after the warm-up round 0")
    seed: int = Field(0, description="the run's seed (sampling)")
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

    @model_validator(mode="before")
    @classmethod
    def _method_preset(cls, data: Any) -> Any:
        # STaR is the same loop with the reflection terms switched off: one preset, no copied code. A setting the
        # user wrote that the preset would overwrite is refused, never silently changed.
        if not isinstance(data, dict) or data.get("method") not in METHOD_PRESETS:
            return data
        data = dict(data)
        for section, values in METHOD_PRESETS[data["method"]].items():
            given = data.get(section)
            if isinstance(given, BaseModel):  # a section passed as a model: what was set in it counts as written
                given = given.model_dump(exclude_unset=True)
            given = dict(given) if isinstance(given, dict) else {} if given is None else given
            if not isinstance(given, dict):
                return data  # a section of the wrong type: the field validation names it
            for key, value in values.items():
                if key in given and given[key] != value:
                    raise ValueError(f"{section}.{key}: {given[key]!r} conflicts with method: {data['method']}, "
                                     f"which sets it to {value!r}; remove it or use method: r3v")
                given[key] = value
            data[section] = given
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.reflect.mixed_min_n > self.reflect.mixed_max_n:
            raise ValueError("reflect.mixed_min_n must be <= reflect.mixed_max_n")
        if self.model.tiny is not None and self.model.tiny.pretrain is not None and self.task.name != "synthetic":
            raise ValueError(f"model.tiny.pretrain: the pool is the built-in task's images (task.name: synthetic), "
                             f"not {self.task.name}'s")
        return self

    @property
    def run_dir(self) -> str:
        return f"{self.storage.root.rstrip('/')}/{self.name}"

    # Sections that change no round's outputs: how many rounds, where and on what the stages run, serving, and how
    # the run reports itself.
    NOT_HASHED: ClassVar[tuple[str, ...]] = ("name", "rounds", "resources", "serve", "storage", "monitoring")

    def digest(self) -> str:
        """A stable hash of what decides a round's outputs (manifests record it to refuse resuming under a
        changed config). Scheduling and storage settings are left out, and local paths are made absolute, so
        extending `rounds` or resuming a local run as cluster jobs is not a config change."""
        return hashlib.sha256(json.dumps(self.hashed(), sort_keys=True).encode()).hexdigest()[:16]

    def hashed(self) -> dict:
        """What `digest` hashes: the config less scheduling and storage, with local paths made absolute."""
        data = self.model_dump(mode="json", exclude=set(self.NOT_HASHED))
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
