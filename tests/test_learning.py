"""Learning, end to end: a small world of plainly visible shapes that this test draws, trained through
`train launch` with the demo recipe for a bounded number of steps, must caption and answer its held-out
pictures far better than any constant caption or answer does. A change that breaks learning (the loss, the
data path, the prompt format, generation) fails here.

The world's training answers are written as Visual Genome writes them ("Yes.", "Two.", "Purple.") and its
held-out references as VQAv2's humans do ("yes", "2", "purple"), so the test also checks that training
targets land in the benchmark's answer space.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from curation.synthetic import images as im
from curation.synthetic.sources import _qas, _sentence, _simple_captions, _vg_answer
from curation.tokenizer import CorpusTooSmallError, TokenizerTrainConfig, train_tokenizer
from eval.cli import main as evaluate
from eval.vqa_metrics import vqa_scores
from shards import Sample, make_key, write_shard

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "training" / "configs" / "demo.toml")
N_TRAIN, N_EVAL, PER_SHARD = 480, 40, 60
STEPS = 300          # about 1.5 min of training on two idle cores (3 min of CPU time)
# The fixture trains and evaluates once for both tests: about 4 minutes on two idle cores, far longer on a
# shared machine, hence more than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(2400)


def picture(rng: random.Random) -> tuple[im.Scene, bytes]:
    scene = im.simple_scene(rng, side=64)
    return scene, im.encode(im.render_scene(scene))


def human_answers(qa: dict, rng: random.Random) -> list[str]:
    """Ten VQAv2-style answers, most of them right."""
    n_right = rng.randint(8, 10)
    out = [qa["answer"]] * n_right + [rng.choice(qa["alternatives"]) for _ in range(10 - n_right)]
    rng.shuffle(out)
    return out


def make_world(root: Path) -> dict:
    rng = random.Random(0)
    train = []
    for i in range(N_TRAIN):
        scene, jpeg = picture(rng)
        caps = _simple_captions(scene)
        rng.shuffle(caps)
        uid = f"vg:{i}"
        train.append(Sample(key=make_key(uid), uid=uid, image=jpeg, width=64, height=64, original_width=64,
                            original_height=64, sources=[{"dataset": "vg", "id": str(i)}],
                            captions=[_sentence(c) for c in caps[:3]],
                            qa=[{"question": qa["question"], "answers": [_vg_answer(qa, "simple")]}
                                for qa in _qas(scene, rng)]))
    held_out = []
    for i in range(N_EVAL):
        scene, jpeg = picture(rng)
        caps = _simple_captions(scene)
        rng.shuffle(caps)
        coco_id = 100000 + i
        held_out.append(Sample(
            key=make_key(f"coco:{coco_id}"), uid=f"coco:{coco_id}", image=jpeg, width=64, height=64,
            original_width=64, original_height=64, sources=[{"dataset": "coco", "id": str(coco_id)}],
            captions=[_sentence(c) for c in caps[:5]],
            qa=[{"question": qa["question"], "answers": human_answers(qa, rng), "question_id": coco_id * 10 + k,
                 "answer_type": qa["answer_type"], "question_type": qa["question_type"]}
                for k, qa in enumerate(_qas(scene, rng))]))
    for s in range(N_TRAIN // PER_SHARD):
        write_shard(str(root / "corpus" / "shards"), s, train[s * PER_SHARD:(s + 1) * PER_SHARD])
    write_shard(str(root / "eval" / "shards"), 0, held_out)
    return {"train": train, "held_out": held_out}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    world = make_world(root)
    tok = str(root / "tokenizer.model")
    try:
        train_tokenizer(str(root / "corpus"), tok, TokenizerTrainConfig(vocab_size=320, workers=1))
    except CorpusTooSmallError as e:   # as many pieces as this small world supports
        train_tokenizer(str(root / "corpus"), tok, TokenizerTrainConfig(vocab_size=e.suggested_vocab_size, workers=1))
    run = root / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "training.cli", "launch", "--config", DEMO, "--nproc-per-node", "2",
           "--set", f"data.shards={root / 'corpus'}", "--set", f"init.tokenizer={tok}", "--set", f"run_dir={run}",
           "--set", f"schedule.total_steps={STEPS}", "--set", f"checkpoint.every_steps={STEPS}",
           "--set", "logging.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for verb, extra in (("caption", ["--spice", "no", "--beam-size", "1"]), ("vqa", [])):
        assert evaluate([verb, "--checkpoint", str(run), "--data", str(root / "eval"), "--out",
                         str(root / verb), "--no-progress", *extra]) == 0
    return {"root": root, "world": world}


def test_captions_beat_every_constant_caption(trained):
    root, world = trained["root"], trained["world"]
    scores = json.loads((root / "caption" / "scores.json").read_text())
    references = json.loads((root / "caption" / "captions_references.json").read_text())
    # The strongest constant: one of the training captions most often written, given for every held-out
    # picture, scored with the same tokenizer and CIDEr-D as `evaluate` uses.
    from pycocoevalcap.cider.cider import Cider

    from eval.coco_java import ptb_tokenize

    common = [c for c, _ in Counter(c for s in world["train"] for c in s.captions).most_common(3)]
    refs: dict = {}
    for a in references["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    refs_tok = ptb_tokenize(refs)
    constants = ptb_tokenize({k: [c] for k, c in enumerate(common)})
    constant = max(Cider().compute_score(refs_tok, {i: constants[k] for i in refs_tok})[0] for k in constants)
    print(f"CIDEr {scores['CIDEr']:.3f} vs best constant caption {constant:.3f}")
    assert scores["CIDEr"] >= max(1.0, 3 * constant)


def test_answers_beat_every_constant_answer(trained):
    root = trained["root"]
    scores = json.loads((root / "vqa" / "scores.json").read_text())
    annotations = json.loads((root / "vqa" / "vqa_annotations.json").read_text())
    questions = json.loads((root / "vqa" / "vqa_questions.json").read_text())
    # Every answer any human gave, given to every question: the best of these is the constant baseline.
    candidates = {a["answer"] for ann in annotations["annotations"] for a in ann["answers"]}
    qids = [q["question_id"] for q in questions["questions"]]
    constant = max(vqa_scores([{"question_id": q, "answer": c} for q in qids], annotations, questions)["overall"]
                   for c in candidates)
    results = json.loads((root / "vqa" / "vqa_results.json").read_text())
    # Trained on "Yes." / "Two.", the model answers in VQAv2's space ("yes", "2").
    assert not any(r["generated"].endswith(".") or r["generated"] != r["generated"].lower() for r in results)
    print(f"VQA {scores['overall']:.2f} vs best constant answer {constant:.2f}; per type {scores['perQuestionType']}")
    assert scores["overall"] >= constant + 25
    assert scores["overall"] >= 50
