"""The demo world's pictures and words: every answer is plainly visible, yes and no are balanced, and the
Visual-Genome-style training answers normalise to the VQAv2-style references."""
import random
from collections import Counter

from curation.synthetic import images as im
from curation.synthetic.sources import _qas, _simple_captions, _vg_answer
from shards.answers import normalize_answer


def scenes(n=400):
    rng = random.Random(7)
    return [(im.simple_scene(rng, side=128), rng) for _ in range(n)]


def test_shapes_are_whole_apart_and_distinctly_coloured():
    for scene, _ in scenes():
        assert 1 <= len(scene.shapes) <= 2 and scene.style == "simple"
        for s in scene.shapes:
            x0, y0, x1, y1 = s.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1          # inside the frame
            assert s.kind in im.SIMPLE_SHAPES and s.color in im.SIMPLE_COLORS
        if len(scene.shapes) == 2:
            a, b = scene.shapes
            assert a.box[2] < b.box[0]                                # left one ends before the right one
            assert a.color != b.color


def test_questions_are_answered_by_the_picture_and_yes_no_is_balanced():
    answers = Counter()
    for scene, rng in scenes():
        kinds = {s.kind for s in scene.shapes}
        for qa in _qas(scene, rng):
            if qa["question_type"] == "how many":
                assert qa["answer"] == str(len(scene.shapes))
            elif qa["question_type"] == "is there a":
                kind = qa["question"].split()[3]
                assert qa["answer"] == ("yes" if kind in kinds else "no")
                answers[qa["answer"]] += 1
            elif qa["question_type"] == "what shape is the":
                color = qa["question"].split()[4]
                assert qa["answer"] == next(s.kind for s in scene.shapes if s.color == color)
            else:
                kind = qa["question"].split()[-1].rstrip("?")
                assert qa["answer"] == next(s.color for s in scene.shapes if s.kind == kind)
        for caption in _simple_captions(scene):
            assert all(f"{s.color} {s.kind}" in caption for s in scene.shapes)
    assert 0.4 < answers["yes"] / sum(answers.values()) < 0.6


def test_visual_genome_answers_normalise_to_the_vqav2_answer():
    for scene, rng in scenes(50):
        for qa in _qas(scene, rng):
            vg = _vg_answer(qa, "simple")
            assert vg.endswith(".") and vg[0].isupper()              # "Yes.", "Two.", "Purple."
            assert normalize_answer(vg) == qa["answer"]               # "yes", "2", "purple"
