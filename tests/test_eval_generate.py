"""`evaluate caption` / `evaluate vqa` end to end: a tiny model taught one caption and one answer per image,
saved as a checkpoint, run on eval shards; single process and torchrun with two processes."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from curation.tokenizer import TokenizerTrainConfig, train_from_sentences
from eval.cli import main
from eval.generate import preprocess
from shards import Sample, make_key, write_shard
from training.config import IMAGE_MEAN, IMAGE_STD, RunConfig
from training.model import FusionModel, ModelConfig
from training.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
COCO_IDS = [391895, 522418, 184613, 318219]
QUESTION = "what color is the tile?"


def caption_of(color: str) -> str:
    return f"a bright {color} square tile"


def human_answers(i: int, color: str) -> list[str]:
    # image 1's humans mostly say something else: the model's "green" is given by 2 of 10 -> 0.6
    return [color] * 10 if i != 1 else [color] * 2 + ["lime"] * 8


def jpeg(rgb, size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalgen")
    sentences = [caption_of(c) for c in COLORS] + [f"question: {QUESTION} answer: {c}" for c in COLORS]
    tok_path = root / "tokenizer.model"
    train_from_sentences(sentences * 10, str(tok_path), TokenizerTrainConfig(vocab_size=35, byte_fallback=False))
    tok = Tokenizer.load(tok_path)

    images = [jpeg(rgb) for rgb in COLORS.values()]
    samples = []
    for i, (color, coco_id) in enumerate(zip(COLORS, COCO_IDS)):
        uid = f"coco:{coco_id}"
        samples.append(Sample(
            key=make_key(uid), uid=uid, image=images[i], sources=[{"dataset": "coco", "id": str(coco_id)}],
            captions=[caption_of(color)], width=48, height=40, original_width=48, original_height=40,
            qa=[{"question": QUESTION, "answers": human_answers(i, color), "question_id": 1000 + i,
                 "answer_type": "other", "question_type": "what color is the"}]))
    data = root / "eval" / "coco"
    write_shard(str(data / "shards"), 0, samples[:3])
    write_shard(str(data / "shards"), 1, samples[3:])

    # Teach a tiny model its captions and answers on exactly the pixels evaluation will feed it.
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, itc_loss_weight=0.0)
    model = FusionModel(cfg)
    pixels = preprocess(images, size=cfg.image_size, mean=IMAGE_MEAN, std=IMAGE_STD, device="cpu")
    rows = [tok.encode_caption(caption_of(c)) for c in COLORS] + [tok.encode_vqa(QUESTION, c) for c in COLORS]
    T = max(len(ids) for ids, _ in rows)
    batch = {
        "image": torch.cat([pixels, pixels]),
        "input_ids": torch.tensor([tok.pad(ids, T) for ids, _ in rows]),
        "attention_mask": torch.tensor([[True] * len(ids) + [False] * (T - len(ids)) for ids, _ in rows]),
        "loss_mask": torch.tensor([list(m) + [False] * (T - len(m)) for _, m in rows]),
        "itc_mask": torch.tensor([True] * 4 + [False] * 4),
        "is_vqa": torch.tensor([False] * 4 + [True] * 4),
    }
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    from safetensors.torch import save_file

    ckpt = root / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    torch.save({"step": 1, "world_size": 1}, ckpt / "train_state.pt")
    shutil.copyfile(tok_path, ckpt / "tokenizer.model")
    run = RunConfig.load(REPO / "training/configs/tiny.toml", [f"init.tokenizer={tok_path}"])
    (ckpt / "config.json").write_text(json.dumps(run.to_record(model=cfg.to_dict(), tokenizer=str(tok_path))))
    return {"run": root / "run", "data": data, "root": root}


def test_caption_command_generates_writes_and_scores(setup, capsys):
    out = setup["root"] / "cap"
    rc = main(["caption", "--checkpoint", str(setup["run"]), "--data", str(setup["data"]), "--out", str(out),
               "--beam-size", "2", "--batch-size", "3", "--no-progress", "--spice", "yes"])
    assert rc == 0
    results = json.loads((out / "captions_results.json").read_text())
    assert results == [{"image_id": i, "caption": caption_of(c)} for i, c in zip(COCO_IDS, COLORS)]
    refs = json.loads((out / "captions_references.json").read_text())
    assert sorted((a["image_id"], a["caption"]) for a in refs["annotations"]) == sorted(
        (i, caption_of(c)) for i, c in zip(COCO_IDS, COLORS))
    scores = json.loads((out / "scores.json").read_text())
    for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "SPICE"):
        assert scores[k] == pytest.approx(1.0, abs=1e-6), k
    assert scores["num_images"] == 4 and scores["run"]["num_samples"] == 4
    assert "CIDEr" in capsys.readouterr().out


def test_vqa_command_answers_every_question(setup, capsys):
    out = setup["root"] / "vqa"
    rc = main(["vqa", "--checkpoint", str(setup["run"]), "--data", str(setup["data"]), "--out", str(out),
               "--no-progress"])
    assert rc == 0
    results = json.loads((out / "vqa_results.json").read_text())
    assert results == [{"question_id": 1000 + i, "answer": c, "generated": c} for i, c in enumerate(COLORS)]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["overall"] == 90.0                     # (1 + 0.6 + 1 + 1) / 4
    assert scores["perQuestionType"] == {"what color is the": 90.0}
    # the written files are the official formats: vqa-scores on them gives the same report
    rescored = setup["root"] / "rescored.json"
    assert main(["vqa-scores", "--results", str(out / "vqa_results.json"), "--questions",
                 str(out / "vqa_questions.json"), "--annotations", str(out / "vqa_annotations.json"),
                 "--out", str(rescored)]) == 0
    assert json.loads(rescored.read_text())["overall"] == 90.0


def test_vqa_under_torchrun_gathers_every_rank(setup):
    out = setup["root"] / "vqa_ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "eval.cli", "vqa", "--checkpoint", str(setup["run"]), "--data", str(setup["data"]),
           "--out", str(out), "--device", "cpu", "--batch-size", "1", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "vqa_results.json").read_text())
    assert results == [{"question_id": 1000 + i, "answer": c, "generated": c} for i, c in enumerate(COLORS)]
    assert json.loads((out / "scores.json").read_text())["overall"] == 90.0
    assert proc.stdout.count("Overall accuracy") == 1    # only rank 0 reports


def test_eval_images_missing_from_the_shards_fail_unless_allowed(setup, capsys):
    """`curate run` records in the eval manifest what became of each eval image; one that could not be
    written is named, and scoring the rest needs --allow-missing-images."""
    from shards import read_shard_stats, shard_name, write_manifest

    data = setup["root"] / "eval_with_manifest"
    shutil.copytree(setup["data"], data)
    infos = [read_shard_stats(str(data / "shards" / f"{shard_name(n)}.tar")) for n in (0, 1)]
    write_manifest(str(data), infos, {}, extra={"eval_set": "coco-karpathy-test",
                                                "eval_images": {"written": 4, "missing_image": 1}})
    out = setup["root"] / "cap_missing"
    args = ["caption", "--checkpoint", str(setup["run"]), "--data", str(data), "--out", str(out),
            "--no-progress", "--spice", "no"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 image(s) of the eval set have no image in the shards (1 missing_image)" in err
    assert "--allow-missing-images" in err
    assert not (out / "scores.json").exists()
    assert main(args + ["--allow-missing-images"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["run"]["missing_images"]["total"] == 1
    assert scores["run"]["missing_images"]["not_written"] == {"missing_image": 1}
    assert scores["num_images"] == 4
