"""scripts/bn_reestimate.py's table: regenerated from the committed JSON, and its comparisons."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from _scripts import load_script

REPO = Path(__file__).resolve().parents[1]
BN = load_script("bn_reestimate")


def test_committed_table_is_regenerated_from_the_json(tmp_path):
    out = BN.table(tmp_path / "README.md")
    assert out.read_text() == (BN.OUT / "README.md").read_text(), "stale: python scripts/bn_reestimate.py table"


def test_a_row_with_its_own_start_is_compared_with_that_start():
    """A re-estimated ``*_from_kd`` row (it quantizes the seed's distilled student) gets a line against its own FP
    start, paired by seed; a row from the zoo FP model does not. The records are the committed W4A4 control's,
    relabelled, so every figure of the new line can be recomputed here."""
    groups = BN.load_groups()
    ctrl = groups[("w4a4", "lsq", 50)]
    fake = []
    for r in ctrl:
        f = copy.deepcopy(r)
        f["row"] = "lsq_from_kd"
        fake.append(f)
    lines = BN._against_control({("w4a4", "lsq", 50): ctrl, ("w4a4", "lsq_from_kd", 50): fake})
    own = [ln for ln in lines if "its own FP start" in ln]
    assert len(own) == 1 and "| w4a4 | lsq_from_kd re-estimated |" in own[0] and "| 3 |" in own[0]
    starts = [json.loads((REPO / f"results/distill/gaitkd_seed{r['seed']}.json").read_text())["result"]["mean"]
              for r in fake]
    diff = sum(r["rank1_after"]["mean"] - s for r, s in zip(fake, starts)) / len(fake)
    assert f"| {diff:+.2f} +- " in own[0]
    assert not any("lsq re-estimated | its own FP start" in ln for ln in lines)
