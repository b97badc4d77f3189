"""Models: the supported families, the tiny-model factory, the torchvision-free processors and one loader for tiny
and real checkpoints."""

from r3v_ray.models.chat import chat_example, chat_prompt
from r3v_ray.models.families import FAMILIES, Family, ModelFamilyError, family_of, get_family
from r3v_ray.models.loading import load_model, load_model_and_processor
from r3v_ray.models.processor import ImageOnlyQwen2VLProcessor, load_processor

__all__ = [
    "FAMILIES",
    "Family",
    "ImageOnlyQwen2VLProcessor",
    "ModelFamilyError",
    "chat_example",
    "chat_prompt",
    "family_of",
    "get_family",
    "load_model",
    "load_model_and_processor",
    "load_processor",
]
