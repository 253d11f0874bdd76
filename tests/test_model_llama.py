"""The LLaMA-layout loader reproduces Hugging Face's reference implementation (transformers is test-only)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers", reason="transformers is the reference for the LLaMA loader")
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel  # noqa: E402

from training.model import FusionModel, load_llama_text_tower, text_config_from_llama  # noqa: E402
from training.model.text import TextTransformer  # noqa: E402

VOCAB = 128


def _llama_config(kv_heads: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=500.0,
        attn_implementation="eager",
    )


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # HF's init (std 0.02, norm weights 1) makes attention almost uniform, which would hide a wrong rotary
    # layout or a swapped norm; large random weights make every mapping matter.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm weights
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * (3.0 if "q_proj" in name or "k_proj" in name else 1.0))


def _save_llama(tmp_path, kv_heads: int, *, causal_lm: bool = False, shard: str | None = None):
    torch.manual_seed(0)
    cfg = _llama_config(kv_heads)
    ref = (LlamaForCausalLM if causal_lm else LlamaModel)(cfg).eval()
    _randomise(ref, seed=kv_heads)
    ckpt = tmp_path / f"llama_kv{kv_heads}"
    if shard:
        ref.save_pretrained(ckpt, max_shard_size=shard)
    else:
        ref.save_pretrained(ckpt)
    return ref, ckpt


def _ids(batch: int = 2, length: int = 19) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_loaded_tower_matches_hf_hidden_states(tmp_path, kv_heads):
    ref, ckpt = _save_llama(tmp_path, kv_heads)
    assert (ckpt / "model.safetensors").is_file()
    cfg = text_config_from_llama(ckpt, preset="tiny", max_len=32)
    assert (cfg.text_kv_heads, cfg.text_norm, cfg.text_pos, cfg.rope_theta) == (kv_heads, "rmsnorm", "rope", 500.0)
    tower = TextTransformer(cfg).eval()
    report = load_llama_text_tower(tower, ckpt)
    assert report["tensors"] == len(ref.state_dict())

    ids = _ids()
    with torch.no_grad():
        expected = ref(input_ids=ids).last_hidden_state  # after the final RMSNorm, like ours
        got = tower(ids)
    assert expected.abs().mean() > 0.1  # a real signal, not a near-zero tensor where anything matches
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_sharded_causal_lm_checkpoint_loads_into_fusion_model(tmp_path):
    ref, ckpt = _save_llama(tmp_path, kv_heads=2, causal_lm=True, shard="40KB")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2  # really sharded
    assert all(name.startswith(("model.", "lm_head")) for name in index["weight_map"])

    cfg = text_config_from_llama(ckpt, preset="tiny", max_len=32)
    assert cfg.tie_embeddings is False  # the checkpoint has its own head, which we keep
    model = FusionModel(cfg).eval()
    report = load_llama_text_tower(model, ckpt)
    assert report["lm_head"] == 1

    ids = _ids()
    with torch.no_grad():
        expected = ref.model(input_ids=ids).last_hidden_state
        got = model.text(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.lm_head.weight, ref.lm_head.weight)
    # the fusion forward runs on the loaded tower
    batch = {
        "image": torch.randn(2, 3, 32, 32), "input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "loss_mask": torch.ones_like(ids, dtype=torch.bool), "itc_mask": torch.ones(2, dtype=torch.bool),
    }
    assert torch.isfinite(model(batch)["loss"])


def test_config_mismatch_is_refused_naming_the_field(tmp_path):
    _, ckpt = _save_llama(tmp_path, kv_heads=2)
    wrong_vocab = text_config_from_llama(ckpt, preset="tiny", vocab_size=32000, max_len=32)
    tower = TextTransformer(wrong_vocab)
    before = tower.embed_tokens.weight.clone()
    with pytest.raises(ValueError, match=r"vocab_size: model has 32000, checkpoint needs 128"):
        load_llama_text_tower(tower, ckpt)
    assert torch.equal(tower.embed_tokens.weight, before)  # a refused load changes nothing

    no_gqa = text_config_from_llama(ckpt, preset="tiny", text_kv_heads=4, max_len=32)
    with pytest.raises(ValueError, match=r"text_kv_heads: model has 4, checkpoint needs 2"):
        load_llama_text_tower(TextTransformer(no_gqa), ckpt)

    from training.model import ModelConfig

    own_tower = ModelConfig.preset("tiny", vocab_size=VOCAB)  # LayerNorm + learned positions
    with pytest.raises(ValueError, match=r"text_norm: model has 'layernorm', checkpoint needs 'rmsnorm'"):
        load_llama_text_tower(FusionModel(own_tower), ckpt)


def test_tensor_shape_and_missing_tensor_refused(tmp_path):
    _, ckpt = _save_llama(tmp_path, kv_heads=2)
    cfg = text_config_from_llama(ckpt, preset="tiny", max_len=32)
    tensors = load_file(ckpt / "model.safetensors")
    tensors["layers.1.mlp.up_proj.weight"] = tensors["layers.1.mlp.up_proj.weight"][:80].contiguous()
    del tensors["norm.weight"]
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(ValueError) as err:
        load_llama_text_tower(TextTransformer(cfg), ckpt)
    message = str(err.value)
    assert "layers.1.mlp.up_proj.weight: checkpoint [80, 64] vs model [96, 64]" in message
    assert "missing tensor norm.weight" in message


def test_unsupported_rope_scaling_refused(tmp_path):
    _, ckpt = _save_llama(tmp_path, kv_heads=4)
    hf = json.loads((ckpt / "config.json").read_text())
    hf["rope_parameters"] = {"rope_theta": 500.0, "rope_type": "llama3", "factor": 8.0}
    with pytest.raises(ValueError, match="rope_type='llama3'"):
        text_config_from_llama(hf, preset="tiny")
