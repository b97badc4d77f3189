"""The DeepSpeed configuration of one training run, from the typed config and the step plan."""

from __future__ import annotations

from r3v_ray.config import TrainingConfig
from r3v_ray.training.plan import StepPlan


def deepspeed_config(cfg: TrainingConfig, plan: StepPlan) -> dict:
    return {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": cfg.gradient_clipping,
        "optimizer": {
            "type": "AdamW",
            # torch_adam: torch.optim.AdamW instead of compiling fused_adam (+45 s on CPU, docs/architecture.md, platform facts)
            "params": {"lr": cfg.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": cfg.weight_decay, "torch_adam": True},
        },
        "zero_optimization": {"stage": cfg.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": cfg.bf16},
        "steps_per_print": 10**9,  # the loop logs its own per-term losses
        "wall_clock_breakdown": False,
        "seed": cfg.seed,
    }
