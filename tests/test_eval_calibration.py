"""The official COCO caption toolkit's demo set: our scores must equal the printed official ones to 3 decimals.

SPICE included: it runs the official jar on Java 17 with CoreNLP from Maven Central (`python -m eval.java_deps
fetch`, done by `make install`). The first run parses ~6,000 captions (minutes on two cores); the parse cache
in ~/.cache/vlfusion/spice-cache makes later runs take seconds.
"""
import json
from pathlib import Path

import pytest

from eval.cli import main

# In the repository (see its README for provenance): a bare clone runs this test with nothing beside it.
CALIBRATION = Path(__file__).resolve().parent / "data" / "eval-calibration"


@pytest.mark.timeout(2400)
def test_calibration_set_reproduces_official_scores(tmp_path, capsys):
    official = json.loads((CALIBRATION / "official_scores.json").read_text())["scores"]
    out = tmp_path / "scores.json"
    rc = main(["caption-scores", "--results", str(CALIBRATION / "coco_val2014_fakecap_results.json"),
               "--annotations", str(CALIBRATION / "coco_val2014_fakecap_references.json"),
               "--out", str(out), "--spice", "yes"])
    assert rc == 0
    ours = json.loads(out.read_text())
    print(capsys.readouterr().out)
    assert ours["num_images"] == 1000
    assert set(official) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}
    mismatched = {k: (round(ours[k], 3), v) for k, v in official.items() if round(ours[k], 3) != v}
    assert not mismatched, f"ours vs official: {mismatched}"
