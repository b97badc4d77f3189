"""Fine-tuning with the R3V losses: examples file, collator, loss, step plan, and the Ray Train + DeepSpeed run."""

from r3v_ray.training.collator import IGNORE_INDEX, ReflectionCollator, model_inputs
from r3v_ray.training.examples import TASK_IDS, ExampleError, read_examples, write_examples
from r3v_ray.training.plan import StepPlan, make_plan
from r3v_ray.training.trainer import TrainingError, TrainResult, train

__all__ = [
    "IGNORE_INDEX",
    "TASK_IDS",
    "ExampleError",
    "ReflectionCollator",
    "StepPlan",
    "TrainResult",
    "TrainingError",
    "make_plan",
    "model_inputs",
    "read_examples",
    "train",
    "write_examples",
]
