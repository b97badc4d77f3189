"""Models: the tiny Qwen2-VL factory, the torchvision-free processor and one loader for tiny and real checkpoints."""

from r3v_ray.models.loading import load_model, load_model_and_processor
from r3v_ray.models.processor import ImageOnlyQwen2VLProcessor, load_processor
from r3v_ray.models.chat import chat_prompt, chat_example

__all__ = [
    "ImageOnlyQwen2VLProcessor",
    "chat_example",
    "chat_prompt",
    "load_model",
    "load_model_and_processor",
    "load_processor",
]
