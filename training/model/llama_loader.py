"""Initialise the text tower from a Hugging Face LLaMA-layout checkpoint on disk.

A checkpoint directory holds `config.json` and either `model.safetensors` or `model.safetensors.index.json`
with its shards. Our text tower uses the HF parameter names and the same rotary layout (rotate_half over two
halves), so q/k weights load unpermuted. Anything that does not fit (vocabulary, widths, head counts, norm
type, rope settings, tensor shapes, missing tensors) is refused with a message naming each mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .config import ModelConfig
from .text import TextTransformer

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_llama_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """config.json as a dict, from a checkpoint dir, the file itself, or an already-read dict."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no LLaMA config.json at {path}")
    return json.loads(path.read_text())


def _rope_theta(hf: dict[str, Any]) -> float:
    # transformers >= 5 nests it in rope_parameters; older files keep rope_theta at top level
    params = hf.get("rope_parameters") or {}
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _check_supported(hf: dict[str, Any]) -> None:
    problems = []
    if hf.get("model_type", "llama") != "llama":
        problems.append(f"model_type={hf.get('model_type')!r} (expected 'llama')")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf.get('hidden_act')!r} (expected 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            problems.append(f"{key}=true (biases are not supported)")
    scaling = hf.get("rope_scaling") or {}
    rope_type = (hf.get("rope_parameters") or {}).get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        problems.append(f"rope_type={rope_type!r} (only plain rotary embeddings are supported)")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        problems.append(f"head_dim={head_dim} x num_attention_heads={heads} != hidden_size={hf['hidden_size']}")
    if problems:
        raise ValueError("unsupported LLaMA checkpoint: " + "; ".join(problems))


def text_config_from_llama(
    source: str | Path | dict[str, Any], *, preset: str = "base", **overrides: Any
) -> ModelConfig:
    """A ModelConfig whose text tower matches the checkpoint's config.json; vision and fusion sizes come from
    `preset`, and `overrides` win over both (e.g. max_len)."""
    hf = read_llama_config(source)
    _check_supported(hf)
    base = ModelConfig.preset(preset)
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    fields: dict[str, Any] = dict(
        vocab_size=hf["vocab_size"],
        max_len=min(base.max_len, hf.get("max_position_embeddings", base.max_len)),
        text_width=width,
        text_depth=hf["num_hidden_layers"],
        text_heads=heads,
        text_kv_heads=hf.get("num_key_value_heads") or heads,
        text_mlp_dim=hf["intermediate_size"],
        text_mlp="swiglu",
        text_norm="rmsnorm",
        text_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        text_pos="rope",
        rope_theta=_rope_theta(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        # fusion runs at the text width: keep the preset's head count when it divides, else the LM's
        fusion_heads=base.fusion_heads if width % base.fusion_heads == 0 else heads,
    )
    fields.update(overrides)
    return ModelConfig.preset(preset, **fields)


def _config_mismatches(cfg: ModelConfig, hf: dict[str, Any]) -> list[str]:
    heads = hf["num_attention_heads"]
    expected = {
        "vocab_size": hf["vocab_size"],
        "text_width": hf["hidden_size"],
        "text_depth": hf["num_hidden_layers"],
        "text_heads": heads,
        "text_kv_heads": hf.get("num_key_value_heads") or heads,
        "text_mlp_dim": hf["intermediate_size"],
        "text_mlp": "swiglu",
        "text_norm": "rmsnorm",
        "text_pos": "rope",
        "text_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_theta": _rope_theta(hf),
    }
    problems = [
        f"{key}: model has {getattr(cfg, key)!r}, checkpoint needs {want!r}"
        for key, want in expected.items()
        if getattr(cfg, key) != want
    ]
    if cfg.max_len > hf.get("max_position_embeddings", cfg.max_len):
        problems.append(f"max_len: model has {cfg.max_len}, checkpoint supports {hf['max_position_embeddings']}")
    return problems


class _CheckpointTensors:
    """Lazy access to the tensors of a single-file or sharded safetensors checkpoint."""

    def __init__(self, ckpt_dir: Path) -> None:
        if (ckpt_dir / INDEX_FILE).is_file():
            weight_map = json.loads((ckpt_dir / INDEX_FILE).read_text())["weight_map"]
            self.files = {name: ckpt_dir / shard for name, shard in weight_map.items()}
        elif (ckpt_dir / SINGLE_FILE).is_file():
            with safe_open(ckpt_dir / SINGLE_FILE, framework="pt") as f:
                self.files = {name: ckpt_dir / SINGLE_FILE for name in f.keys()}
        else:
            raise FileNotFoundError(f"{ckpt_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}")
        missing_shards = sorted({str(p) for p in self.files.values() if not p.is_file()})
        if missing_shards:
            raise FileNotFoundError(f"checkpoint shards missing: {missing_shards}")
        # LlamaForCausalLM prefixes the body with "model."; a bare LlamaModel does not
        self.names = {name.removeprefix("model."): name for name in self.files}

    def shape(self, name: str) -> list[int]:
        with safe_open(self.files[self.names[name]], framework="pt") as f:
            return list(f.get_slice(self.names[name]).get_shape())

    def get(self, name: str) -> torch.Tensor:
        with safe_open(self.files[self.names[name]], framework="pt") as f:
            return f.get_tensor(self.names[name])


@torch.no_grad()
def load_llama_text_tower(model_or_text_tower: Any, ckpt_dir: str | Path) -> dict[str, int]:
    """Copy a LLaMA checkpoint into FusionModel.text (or a TextTransformer), and into the untied LM head of a
    FusionModel when the checkpoint has lm_head.weight. Returns {"tensors": n_loaded, "lm_head": 0|1}.

    Raises ValueError naming every mismatch before anything is copied, so a refused load changes nothing."""
    ckpt_dir = Path(ckpt_dir)
    if isinstance(model_or_text_tower, TextTransformer):
        tower, fusion_model = model_or_text_tower, None
    else:
        tower, fusion_model = model_or_text_tower.text, model_or_text_tower
    hf = read_llama_config(ckpt_dir)
    _check_supported(hf)
    problems = _config_mismatches(tower.cfg, hf)
    if problems:
        raise ValueError(
            f"LLaMA checkpoint {ckpt_dir} does not fit the text tower (build the config with "
            "text_config_from_llama): " + "; ".join(problems)
        )

    tensors = _CheckpointTensors(ckpt_dir)
    targets = dict(tower.state_dict(keep_vars=True))  # our names == HF names without "model."
    head = None
    if fusion_model is not None and fusion_model.lm_head is not None and "lm_head.weight" in tensors.names:
        head = fusion_model.lm_head.weight
        targets["lm_head.weight"] = head
    ignored = {"lm_head.weight"}  # a tied model keeps its head tied to embed_tokens
    problems = [f"missing tensor {name}" for name in targets if name not in tensors.names]
    problems += [
        f"unexpected tensor {name} (checkpoint has more than the model)"
        for name in tensors.names
        if name not in targets and name not in ignored and not name.endswith("rotary_emb.inv_freq")
    ]
    problems += [
        f"{name}: checkpoint {tensors.shape(name)} vs model {list(param.shape)}"
        for name, param in targets.items()
        if name in tensors.names and tensors.shape(name) != list(param.shape)
    ]
    if problems:
        raise ValueError(f"LLaMA checkpoint {ckpt_dir} does not fit the text tower: " + "; ".join(problems))

    for name, param in targets.items():
        param.copy_(tensors.get(name))
    return {"tensors": len(targets), "lm_head": int(head is not None)}
