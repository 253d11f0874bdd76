"""`make demo`'s curation config (written by .ci/demo.sh) is valid for the current config schema: a key
renamed or removed in `curation.config` must not leave the demo refusing to start."""

from __future__ import annotations

import re
from pathlib import Path

from curation.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_curate_config_loads(tmp_path):
    script = (REPO / ".ci" / "demo.sh").read_text()
    m = re.search(r'cat > "\$D/curate\.toml" <<TOML\n(.*?)\nTOML\n', script, re.S)
    assert m, "demo.sh no longer writes curate.toml from a heredoc; update this test"
    text = m.group(1).replace("$D", str(tmp_path)).replace("$S", str(tmp_path / "sources"))
    assert "$" not in text, "an unexpanded shell variable in the demo config"
    path = tmp_path / "curate.toml"
    path.write_text(text)
    cfg = load_config(str(path), [])
    assert [s.kind for s in cfg.sources] == ["cc3m", "cc12m", "coco", "vg"]
    assert {e.kind for e in cfg.eval_sets} == {"coco-karpathy", "vqav2"}
