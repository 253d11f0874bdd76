"""Caption metrics: input checks, and the defined behaviour for empty, non-ASCII and multi-line captions."""
import json
import math

import pytest

from eval.caption_metrics import CaptionInputError, caption_scores, clean_caption, fold_to_ascii
from eval.cli import main


def coco(refs: dict) -> dict:
    """COCO captions annotation dict from {image_id: [captions]}."""
    anns = [{"image_id": i, "id": n, "caption": c}
            for n, (i, c) in enumerate(((i, c) for i, cs in refs.items() for c in cs), start=1)]
    return {"images": [{"id": i} for i in refs], "annotations": anns, "type": "captions"}


REFS = {
    1: ["A brown dog runs on the green grass.", "a dog running across a lawn"],
    2: ["Two cats sleep on a bed.", "a pair of cats lying on a bed"],
    3: ["A man rides a horse on the beach.", "a person riding a brown horse near the ocean"],
}


# ---- input checks happen before any Java runs

def test_result_for_unknown_image_is_named():
    with pytest.raises(CaptionInputError, match=r"without references: 99 \(1 in all\)"):
        caption_scores([{"image_id": 1, "caption": "a dog"}, {"image_id": 99, "caption": "x"}], coco(REFS),
                       allow_subset=True)


def test_missing_results_are_named_unless_subset_allowed():
    results = [{"image_id": 1, "caption": "a dog"}]
    with pytest.raises(CaptionInputError, match=r"no caption result for referenced images 2, 3 \(2 in all\)"):
        caption_scores(results, coco(REFS))


def test_two_captions_for_one_image_are_rejected():
    results = [{"image_id": i, "caption": "a dog"} for i in (1, 2, 3)] + [{"image_id": 2, "caption": "b"}]
    with pytest.raises(CaptionInputError, match="more than one caption for images 2"):
        caption_scores(results, coco(REFS))


@pytest.mark.parametrize("bad", [{"image_id": 1}, {"image_id": 1, "caption": None}, ["a dog"]])
def test_malformed_results_are_rejected(bad):
    with pytest.raises(CaptionInputError):
        caption_scores([bad], coco(REFS), allow_subset=True)


def test_non_ascii_error_mode_names_the_characters():
    with pytest.raises(CaptionInputError, match="non-ASCII characters 'é'"):
        caption_scores([{"image_id": 1, "caption": "a café"}], coco(REFS), allow_subset=True, non_ascii="error")


def test_fold_to_ascii_and_line_breaks():
    assert fold_to_ascii("naïve café – the dog’s “bowl”…") == "naive cafe - the dog's \"bowl\"..."
    assert fold_to_ascii("a 猫 cat") == "a   cat"
    assert clean_caption("a man\rriding\u2028a\x0bhorse\x00", non_ascii="fold", where="t") == (
        "a man riding a horse ", True)


# ---- defined behaviour, checked through the real Java tools

def test_line_breaks_and_non_ascii_do_not_shift_captions():
    """A "\\r" would split a line in the Java tokenizer and move every later caption to the wrong image; the
    scores must equal those of the same captions written plainly."""
    messy = [{"image_id": 1, "caption": "a brown dog\rruns on the grass"},
             {"image_id": 2, "caption": "two cats sleeping on a bed"},
             {"image_id": 3, "caption": "a man riding a horse on the beach"}]
    clean = [dict(r, caption=r["caption"].replace("\r", " ")) for r in messy]
    messy[1]["caption"] = "two cäts sleeping on a bed"   # folds to "cats"
    a = caption_scores(messy, coco(REFS), spice=False, non_ascii="fold")
    b = caption_scores(clean, coco(REFS), spice=False, non_ascii="fold")
    assert a.pop("num_folded_results") == 1 and b.pop("num_folded_results") == 0
    assert a == b
    assert a["Bleu_1"] > 0.5


def test_empty_caption_is_scored_as_no_words():
    refs = {1: ["A brown dog runs on the green grass."], 2: ["two cats sleep on a bed"]}
    results = [{"image_id": 1, "caption": "a brown dog runs on the green grass"},
               {"image_id": 2, "caption": " ... "}]        # nothing left after PTB tokenisation
    s = caption_scores(results, coco(refs), spice=True)
    assert s["num_empty_captions"] == 1
    # image 1 is perfect, image 2 scores 0: per-image means are halved
    assert s["ROUGE_L"] == pytest.approx(0.5)
    assert s["SPICE"] == pytest.approx(0.5)
    # corpus BLEU-1: all 8 words match, brevity penalty over the closest reference lengths 8 + 6
    assert s["Bleu_1"] == pytest.approx(math.exp(1 - 14 / 8), rel=1e-6)
    assert 0 < s["METEOR"] < 1 and s["CIDEr"] > 0
    with pytest.raises(CaptionInputError, match="no words for images 2"):
        caption_scores(results, coco(refs), spice=False, empty="error")


def test_caption_scores_command_rejects_missing_references(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps([{"image_id": 7, "caption": "a dog"}]))
    (tmp_path / "a.json").write_text(json.dumps(coco(REFS)))
    rc = main(["caption-scores", "--results", str(tmp_path / "r.json"), "--annotations", str(tmp_path / "a.json"),
               "--out", str(tmp_path / "s.json")])
    assert rc == 2
    assert "without references: 7" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


# ---- non-ASCII text goes to the tokenizer unchanged by default, as pycocoevalcap 1.2 passes it

NON_ASCII_REFS = {1: ["A café on the corner.", "a small café with red chairs"],
                  2: ["Two cats sleep on a bed.", "a pair of cats lying on a bed"]}


def test_non_ascii_is_kept_by_default_and_folding_counts_what_it_changed():
    results = [{"image_id": 1, "caption": "a café with red chairs"}, {"image_id": 2, "caption": "two cats on a bed"}]
    kept = caption_scores(results, coco(NON_ASCII_REFS), spice=False)
    assert kept["num_folded_results"] == 0 and kept["num_folded_references"] == 0
    folded = caption_scores(results, coco(NON_ASCII_REFS), spice=False, non_ascii="fold")
    assert folded["num_folded_results"] == 1          # one result had an "é"
    assert folded["num_folded_references"] == 2       # and two references
    # "café" matches "café" either way; against ASCII references only the kept text loses the word
    ascii_refs = {1: ["a cafe on the corner", "a small cafe with red chairs"], 2: NON_ASCII_REFS[2]}
    assert (caption_scores(results, coco(ascii_refs), spice=False)["Bleu_1"]
            < caption_scores(results, coco(ascii_refs), spice=False, non_ascii="fold")["Bleu_1"])


def test_ptb_tokenize_equals_the_toolkits_tokenizer_and_writes_nothing_beside_the_jar():
    import os

    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from eval.coco_java import ptb_jar, ptb_tokenize

    captions = {1: ["A Café, naïve “dog” – it's 3.5 m!", "Two cats (sleeping) on a bed..."], 2: ["日本の猫 cat"]}
    jar_dir = ptb_jar().parent
    before = os.stat(jar_dir).st_mtime_ns
    ours = ptb_tokenize(captions)
    assert os.stat(jar_dir).st_mtime_ns == before      # no temp file created (and removed) in site-packages
    theirs = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    assert os.stat(jar_dir).st_mtime_ns != before      # the toolkit's own wrapper does write there
    assert ours == theirs
    assert ours[1][0].startswith("a café naïve")


def test_tokenizer_and_meteor_run_on_vlfusion_java(tmp_path, monkeypatch):
    import shutil

    java = shutil.which("java")
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "java-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {java} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("VLFUSION_JAVA", str(wrapper))
    results = [{"image_id": i, "caption": REFS[i][1]} for i in REFS]
    s = caption_scores(results, coco(REFS), spice=False)
    calls = log.read_text().splitlines()
    assert sum("PTBTokenizer" in c for c in calls) == 2          # references and results
    assert sum("meteor-1.5.jar" in c for c in calls) == 1
    assert s["METEOR"] > 0.5
