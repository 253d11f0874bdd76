"""Fusion training from a LLaMA-layout checkpoint: the text tower takes the checkpoint's shape and weights and
the run uses the tokenizer shipped with it; a tokenizer that does not match the checkpoint is refused."""
import io
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers", reason="transformers builds the reference LLaMA checkpoint")
import sentencepiece as spm  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from curation.synthetic.corpus import SCENE_THINGS, make_shards, scene_caption, train_small_tokenizer  # noqa: E402
from training.checkpoint import list_checkpoints, load_for_inference, load_weights  # noqa: E402
from training.cli import main as train_main  # noqa: E402
from training.config import RunConfig  # noqa: E402
from training.tokenizer import Tokenizer  # noqa: E402
from training.trainer import resolve_model_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "training/configs/tiny.toml")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM saved by transformers, with a SentencePiece tokenizer.model in LLaMA's
    id convention (unk 0, bos 1, eos 2, no pad) whose size is the checkpoint's vocabulary."""
    ckpt = tmp_path_factory.mktemp("llama")
    rng = random.Random(0)
    texts = [scene_caption(rng) for _ in range(300)] + [f"question: what is on the left? answer: {t}" for t in SCENE_THINGS]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=proto, vocab_size=96, model_type="bpe", unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)
    (ckpt / "tokenizer.model").write_bytes(proto.getvalue())
    vocab = Tokenizer.load(ckpt).vocab_size
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(ckpt)
    return ckpt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_shards(root, num_shards=1, per_shard=6)
    return root


def common(corpus: Path, llama_dir: Path, run_dir: Path) -> list[str]:
    # init.tokenizer left empty on purpose: the checkpoint's tokenizer.model must be picked up
    return [f"data.shards={corpus}", f"init.llm_checkpoint={llama_dir}", "init.tokenizer=", f"run_dir={run_dir}",
            "schedule.total_steps=3", "schedule.warmup_steps=2", "checkpoint.every_steps=1", "checkpoint.keep_last=3",
            "batch.global_batch=4", "data.num_workers=0", "data.shuffle_buffer=8", "logging.progress=false",
            "logging.tensorboard=false"]


def test_fusion_run_starts_from_the_llama_checkpoint(tmp_path, corpus, llama_dir):
    run_dir = tmp_path / "run"
    assert train_main(["worker", "--config", TINY] + sum((["--set", s] for s in common(corpus, llama_dir, run_dir)),
                                                          [])) == 0
    reference = {k.removeprefix("model."): v for k, v in load_file(str(llama_dir / "model.safetensors")).items()}
    steps = list_checkpoints(run_dir)
    assert [p.name for p in steps] == ["step_00000001", "step_00000002", "step_00000003"]

    # the warmup gives step 0 a learning rate of 0, so the weights after it are the initial ones
    first = load_weights(steps[0])
    assert first["text.embed_tokens.weight"].shape == (reference["embed_tokens.weight"].shape[0], 48)
    for name, value in reference.items():
        ours = first[name if name == "lm_head.weight" else f"text.{name}"]
        assert torch.equal(ours, value), name
    # ... and training then moves them
    last = load_weights(steps[-1])
    assert not torch.equal(last["text.embed_tokens.weight"], reference["embed_tokens.weight"])

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))) and not any(r["skipped"] for r in records)

    cfg = json.loads((steps[-1] / "config.json").read_text())
    assert cfg["tokenizer"] == str((llama_dir / "tokenizer.model").resolve())
    m = cfg["model"]
    assert (m["text_width"], m["text_kv_heads"], m["text_norm"], m["text_pos"], m["text_mlp"]) == \
        (48, 2, "rmsnorm", "rope", "swiglu")
    assert (m["vision_width"], m["image_size"]) == (64, 32)               # the rest is still the tiny preset
    assert (steps[-1] / "tokenizer.model").read_bytes() == (llama_dir / "tokenizer.model").read_bytes()
    model, tok, _ = load_for_inference(run_dir)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)              # LLaMA's ids drove the data
    assert torch.equal(model.text.embed_tokens.weight, last["text.embed_tokens.weight"])


def test_a_tokenizer_that_does_not_fit_the_checkpoint_is_refused(tmp_path, corpus, llama_dir):
    ours = train_small_tokenizer(tmp_path / "ours.model")       # pad 0, unk 1, bos 2, eos 3, a different size
    cfg = RunConfig.load(TINY, common(corpus, llama_dir, tmp_path / "run") + [f"init.tokenizer={ours}"])
    with pytest.raises(ValueError) as err:
        resolve_model_config(cfg)
    message = str(err.value)
    vocab = Tokenizer.load(llama_dir).vocab_size
    assert f"{Tokenizer.load(ours).vocab_size} pieces vs a {vocab}-row embedding table" in message
    assert "bos_id 2 vs the checkpoint's bos_token_id 1" in message and str(llama_dir) in message

    bare = tmp_path / "no_tokenizer"
    bare.mkdir()
    (bare / "config.json").write_bytes((llama_dir / "config.json").read_bytes())
    cfg = RunConfig.load(TINY, common(corpus, bare, tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="has no tokenizer.model and init.tokenizer is empty"):
        resolve_model_config(cfg)
