"""VQAv2 accuracy: the official rules on hand-computed cases, and the vqa-scores command on files."""
import json

import pytest

from eval.cli import main
from eval.vqa_metrics import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    vqa_scores,
)


def ten(*pairs):
    """ten(("2", 9), ("3", 1)) -> the ten human answers."""
    out = [a for a, n in pairs for _ in range(n)]
    assert len(out) == 10
    return out


# ---- the leave-one-out formula: mean over 10 subsets of min(1, matches/3)

def test_two_of_ten_scores_point_six():
    # dropping one of the 2 matching annotators leaves 1 match (1/3), 2 times; otherwise 2 matches (2/3), 8 times
    assert question_accuracy("red", ten(("red", 2), ("blue", 8))) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert question_accuracy("red", ten(("red", 2), ("blue", 8))) == pytest.approx(0.6)


@pytest.mark.parametrize("matches, expected", [
    (0, 0.0),
    (1, 0.3),    # 9 subsets keep the match: 9 * 1/3 / 10
    (3, 0.9),    # 3 subsets keep 2 matches (2/3), 7 keep 3 (1)
    (4, 1.0),    # every subset keeps >= 3
    (10, 1.0),
])
def test_match_counts(matches, expected):
    answers = ten(("cat", matches), ("dog", 10 - matches)) if matches < 10 else ["cat"] * 10
    assert question_accuracy("cat", answers) == pytest.approx(expected)


# ---- normalisation only when the humans disagree

def test_agreeing_humans_are_not_normalised():
    assert question_accuracy("two", ["2"] * 10) == 0.0
    assert question_accuracy("Yes", ["yes"] * 10) == 0.0        # no lower-casing either
    assert question_accuracy("2", ["2"] * 10) == 1.0


def test_disagreeing_humans_normalise_both_sides():
    # "two" -> "2" matches the nine "2"s: every subset keeps >= 8 matches
    assert question_accuracy("two", ten(("2", 9), ("3", 1))) == 1.0
    assert question_accuracy("Yes.", ten(("yes", 5), ("no", 5))) == 1.0
    # "the dog" loses its article and matches the five "dog" (and the five "a dog")
    assert question_accuracy("the dog", ten(("dog", 5), ("a dog", 5))) == 1.0


def test_whitespace_is_always_cleaned():
    assert question_accuracy(" 2\n", ["2"] * 10) == 1.0
    assert question_accuracy("2", ["2\t"] * 9 + [" 2"]) == 1.0   # identical once stripped: still "agreeing"


# ---- the answer processing rules

@pytest.mark.parametrize("text, expected", [
    ("black/white", "black white"),        # punctuation with no space next to it -> space
    ("left - right", "left  right"),       # punctuation next to a space -> removed
    ("1,000", "1000"),                     # comma between digits: all punctuation removed
    ("1,000 (approx)", "1000 approx"),     # ... everywhere in the answer, not only in the number
    ("a,b", "a b"),
    ("yes.", "yes"),                       # periods not followed by a digit are removed
    ("3.5", "3.5"),                        # the decimal point stays
    ("mr. t's", "mr t's"),                 # apostrophes are not punctuation here
    ("what?!", "what  "),
])
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


def test_period_rule_caps_at_32_removals_like_the_official_call():
    # The official code passes re.UNICODE (32) as the `count` of re.sub.
    assert process_punctuation("." * 40) == "." * 8


@pytest.mark.parametrize("text, expected", [
    ("Two Dogs", "2 dogs"),
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),                  # the table stops at ten
    ("the  cat   and a an dog", "cat and dog"),
    ("dont", "don't"),
    ("Isnt it", "isn't it"),
    ("somebody'd", "somebodyd"),           # the official table's reversed entry
    ("Im", "im"),                          # capitalised keys can never match after lower-casing
])
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_normalize_answer_chains_both():
    assert normalize_answer("The two dogs.") == "2 dogs"
    assert normalize_answer("Doesnt it?") == "doesn't it"


# ---- corpus report

def annotations_fixture():
    return {"annotations": [
        {"question_id": 1, "image_id": 10, "answer_type": "yes/no", "question_type": "is the",
         "answers": [{"answer": "yes", "answer_id": k} for k in range(1, 11)]},
        {"question_id": 2, "image_id": 10, "answer_type": "number", "question_type": "how many",
         "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(ten(("2", 2), ("3", 8)))]},
        {"question_id": 3, "image_id": 11, "answer_type": "other", "question_type": "what color is the",
         "answers": [{"answer": "red", "answer_id": k} for k in range(1, 11)]},
        {"question_id": 4, "image_id": 11, "answer_type": "other", "question_type": "what color is the",
         "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(ten(("blue", 1), ("navy", 9)))]},
    ]}


def questions_fixture():
    return {"questions": [{"question_id": q, "image_id": 10 + (q > 2), "question": f"q{q}?"} for q in (1, 2, 3, 4)]}


def test_vqa_scores_report_in_percent():
    results = [{"question_id": 1, "answer": "yes"},     # 1.0
               {"question_id": 2, "answer": "two"},     # humans disagree -> "2": 2 of 10 -> 0.6
               {"question_id": 3, "answer": "Red"},     # humans agree, exact compare -> 0
               {"question_id": 4, "answer": "blue"}]    # 1 of 10 -> 0.3
    s = vqa_scores(results, annotations_fixture(), questions_fixture())
    assert s["overall"] == round(100 * (1.0 + 0.6 + 0.0 + 0.3) / 4, 2) == 47.5
    assert s["perAnswerType"] == {"number": 60.0, "other": 15.0, "yes/no": 100.0}
    assert s["perQuestionType"] == {"how many": 60.0, "is the": 100.0, "what color is the": 15.0}
    assert s["num_questions"] == 4


def test_missing_and_extra_question_ids_are_named():
    results = [{"question_id": 1, "answer": "yes"}, {"question_id": 3, "answer": "red"},
               {"question_id": 99, "answer": "x"}]
    with pytest.raises(ValueError) as e:
        vqa_scores(results, annotations_fixture())
    msg = str(e.value)
    assert "no answer for question ids 2, 4 (2 in all)" in msg
    assert "99" in msg


def test_duplicate_answers_and_bad_types_are_rejected():
    results = [{"question_id": q, "answer": "x"} for q in (1, 2, 3, 4)] + [{"question_id": 2, "answer": "y"}]
    with pytest.raises(ValueError, match="more than once: 2"):
        vqa_scores(results, annotations_fixture())
    with pytest.raises(ValueError, match="must be a string"):
        vqa_scores([{"question_id": 1, "answer": 2}], annotations_fixture())


def test_questions_file_must_match_annotations():
    qs = questions_fixture()
    qs["questions"].pop()
    results = [{"question_id": q, "answer": "x"} for q in (1, 2, 3, 4)]
    with pytest.raises(ValueError, match="in annotations only: 4"):
        vqa_scores(results, annotations_fixture(), qs)


def test_vqa_scores_command_writes_json_and_prints_table(tmp_path, capsys):
    paths = {}
    for name, obj in (("results", [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "2"},
                                   {"question_id": 3, "answer": "red"}, {"question_id": 4, "answer": "navy"}]),
                      ("questions", questions_fixture()), ("annotations", annotations_fixture())):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(obj))
    out = tmp_path / "sub" / "scores.json"
    rc = main(["vqa-scores", "--results", str(paths["results"]), "--questions", str(paths["questions"]),
               "--annotations", str(paths["annotations"]), "--out", str(out)])
    assert rc == 0
    scores = json.loads(out.read_text())
    assert scores["overall"] == 90.0  # 1 + 0.6 + 1 + 1
    assert scores["perAnswerType"]["number"] == 60.0
    printed = capsys.readouterr().out
    assert "Overall accuracy: 90.00" in printed and "how many" in printed


def test_vqa_scores_command_names_missing_questions(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps([{"question_id": 1, "answer": "yes"}]))
    (tmp_path / "q.json").write_text(json.dumps(questions_fixture()))
    (tmp_path / "a.json").write_text(json.dumps(annotations_fixture()))
    rc = main(["vqa-scores", "--results", str(tmp_path / "r.json"), "--questions", str(tmp_path / "q.json"),
               "--annotations", str(tmp_path / "a.json"), "--out", str(tmp_path / "s.json")])
    assert rc == 2
    assert "no answer for question ids 2, 3, 4" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


MISSING_INPUT = {
    "caption-scores": ["--results", "{missing}", "--annotations", "{missing}"],
    "vqa-scores": ["--results", "{missing}", "--questions", "{missing}", "--annotations", "{missing}"],
    "caption": ["--checkpoint", "{missing}", "--data", "{missing}"],
    "vqa": ["--checkpoint", "{missing}", "--data", "{missing}"],
}


@pytest.mark.parametrize("verb", list(MISSING_INPUT))
def test_every_verb_names_a_missing_input_in_one_line_and_writes_nothing(verb, tmp_path, capsys):
    missing = str(tmp_path / "not-there")
    out = tmp_path / "out"
    rc = main([verb, *(a.format(missing=missing) for a in MISSING_INPUT[verb]), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"evaluate {verb}: error: ") and "not-there" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


# ---- rounding as the official Python 2 code rounds

def _one_type_annotations(n: int) -> dict:
    return {"annotations": [{"question_id": q, "image_id": 1, "answer_type": "yes/no", "question_type": "is the",
                             "answers": [{"answer": "yes", "answer_id": k} for k in range(1, 11)]}
                            for q in range(n)]}


def test_ties_round_half_away_from_zero_like_python2():
    # 1 of 32 right: 100 * 1 / 32 = 3.125 exactly; Python 2's round(3.125, 2) is 3.13, Python 3's is 3.12.
    results = [{"question_id": q, "answer": "yes" if q == 0 else "no"} for q in range(32)]
    s = vqa_scores(results, _one_type_annotations(32))
    assert s["overall"] == 3.13
    assert s["perAnswerType"] == {"yes/no": 3.13}
    assert s["perQuestionType"] == {"is the": 3.13}
    # 3 of 8 right: 37.5 -> 37.5 (no third decimal to round); 5 of 8: 62.5
    assert vqa_scores([{"question_id": q, "answer": "yes" if q < 3 else "no"} for q in range(8)],
                      _one_type_annotations(8))["overall"] == 37.5


def test_round_like_python2_uses_the_exact_binary_value():
    from eval.vqa_metrics import round_like_python2

    assert round_like_python2(3.125) == 3.13 and round(3.125, 2) == 3.12    # an exact tie: away from zero
    assert round_like_python2(2.675) == 2.67       # 2.675 is 2.67499999... in binary: no tie, rounds down
    assert round_like_python2(-0.125) == -0.13
    assert round_like_python2(100 / 3) == 33.33


# ---- non-ASCII answers as the official code (Python 2, unicode strings) treats them

@pytest.mark.parametrize("text, expected", [
    ("Café.", "café"),                      # lower-cased, period dropped, accent kept
    ("3.\u0665", "3\u0665"),                # Python 2's \d is ASCII only: a period before an Arabic-Indic
                                            # digit is not a decimal point and goes
    ("\u0661,\u0662 x-y", "\u0661 \u0662 x y"),  # nor is "١,٢" a digit comma: punctuation becomes spaces
    ("\u0130STANBUL", "istanbul"),          # Python 2's simple lower-case mapping: İ -> i, no combining dot
    ("ΔΥΟ", "δυο"),
    ("日本", "日本"),
])
def test_non_ascii_answers_follow_the_python2_official_code(text, expected):
    assert normalize_answer(text) == expected


def test_non_ascii_prediction_scored_against_disagreeing_humans():
    assert question_accuracy("Café.", ten(("café", 6), ("coffee", 4))) == 1.0
    assert question_accuracy("Café.", ["café"] * 10) == 0.0    # humans agree: raw comparison, as official


# ---- training targets use the same answer space

def test_training_vqa_targets_are_normalised_and_the_shard_keeps_the_raw_answer():
    from collections import Counter

    from training.data import expand, most_common_answer

    assert most_common_answer(["Yes.", "yes", "No."]) == "yes"     # "Yes." and "yes" are one answer
    assert most_common_answer(["Two.", "2", "three"]) == "2"
    assert most_common_answer(["The big one.", "big one"]) == "big 1"   # the official table: "one" -> "1"
    assert most_common_answer(["", " "]) is None
    from shards import Sample

    qa = [{"question": "How many shapes are there?", "answers": ["Two."]},
          {"question": "Is there a circle?", "answers": ["Yes."]},
          {"question": "What color is the circle?", "answers": ["Purple."]}]
    sample = Sample(key="k", uid="u", image=b"\xff\xd8", captions=["a red circle"], qa=qa)
    items = expand(sample, stage="fusion", include_captions=True, include_qa=True, counters=Counter())
    assert [(i.kind, i.answer) for i in items if i.kind == "vqa"] == [("vqa", "2"), ("vqa", "yes"), ("vqa", "purple")]
    assert sample.qa[0]["answers"] == ["Two."]     # provenance: the sample read from the shard is unchanged
    # and each target scores 100 against VQAv2-style references
    assert question_accuracy("2", ["2"] * 10) == question_accuracy("yes", ["yes"] * 10) == 1.0
