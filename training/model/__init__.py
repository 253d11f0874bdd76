"""vlfusion's model: MAE-pretrained ViT + causal text tower (optionally from a LLaMA checkpoint) + late-fusion
cross-attention, trained with captioning, VQA and image-text contrastive losses."""

from .config import PRESETS, ModelConfig
from .flops import flops_per_sample
from .fusion import FusionModel
from .generate import generate
from .llama_loader import load_llama_text_tower, text_config_from_llama
from .mae import MAEPretrainer, patchify, unpatchify

__all__ = [
    "PRESETS",
    "FusionModel",
    "MAEPretrainer",
    "ModelConfig",
    "flops_per_sample",
    "generate",
    "load_llama_text_tower",
    "patchify",
    "text_config_from_llama",
    "unpatchify",
]
