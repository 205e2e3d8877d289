"""Dataset protocols (Gait3D, GREW, OU-MVLP variants, CCPG, SUSTech1K) against hand-computed small cases.

Every embedding is ``[n, 1, 1]``, so the part distance is ``|x - y|`` and the rankings can be read off by hand.
"""

import numpy as np
import pytest

from qgait.evaluation.ccpg import ccpg_view, evaluate_ccpg
from qgait.evaluation.cross_view import OUMVLP, OUMVLP_VALID, CrossViewProtocol, evaluate_cross_view, get_protocol
from qgait.evaluation.gait3d import evaluate_gait3d, gait3d_probe_mask
from qgait.evaluation.grew import (GREW_SUBMISSION_HEADER, evaluate_grew, grew_submission_rows,
                                   write_grew_submission)
from qgait.evaluation.sustech1k import evaluate_sustech1k


def emb(xs):
    return np.asarray(xs, dtype=np.float64).reshape(-1, 1, 1)


# ---------------------------------------------------------------------------------------------------- Gait3D
def test_gait3d_hand_case():
    # probes A (x=0), B (x=10), C (x=20); gallery A/c2 3, B/c2 1, A/c3 5, C/c2 20.5
    seqs = [("A", "c1", "s0", 0.0), ("A", "c2", "s0", 3.0), ("B", "c1", "s0", 10.0), ("B", "c2", "s0", 1.0),
            ("A", "c3", "s0", 5.0), ("C", "c1", "s0", 20.0), ("C", "c2", "s0", 20.5)]
    probe_set = ["A-c1-s0", "B-c1-s0", "C-c1-s0"]
    s, c, v, x = zip(*seqs)
    r = evaluate_gait3d(emb(x), s, c, v, probe_set)
    # A: order B, A, A, C -> positives at 2, 3: AP (1/2 + 2/3) / 2 = 7/12, INP 2/3
    # B: order A(5), A(7), B(9), C -> position 3: AP 1/3, INP 1/3
    # C: C first: AP 1, INP 1
    assert r["protocol"] == "Gait3D" and r["num_probes"] == 3 and r["num_gallery"] == 4
    assert r["rank-1"] == pytest.approx(100 / 3)
    assert r["rank-5"] == pytest.approx(100.0) and r["rank-10"] == pytest.approx(100.0)
    assert r["mAP"] == pytest.approx(100 * (7 / 12 + 1 / 3 + 1) / 3)
    assert r["mINP"] == pytest.approx(100 * (2 / 3 + 1 / 3 + 1) / 3)


def test_gait3d_probe_list_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match="no sequence is in the probe list"):
        gait3d_probe_mask(["0001"], ["camid0_videoid1"], ["seq0"], ["9999-camid0_videoid1-seq0"])
    with pytest.raises(ValueError, match="gallery is empty"):
        gait3d_probe_mask(["0001"], ["c"], ["s"], ["0001-c-s"])


# ------------------------------------------------------------------------------------------------------ GREW
def test_grew_labelled_split_hand_case():
    subjects = ["00001", "00002", "00003", "00001", "00002", "00003", "probe"]
    conditions = ["01", "01", "01", "02", "02", "02", "03"]
    x = [0, 10, 20, 11, 9, 4, 100]
    r = evaluate_grew(emb(x), subjects, conditions)
    # 00001 @11: 00002 (1), 00003 (9), 00001 (11) -> 3rd; 00002 @9: hit; 00003 @4: 00001, 00002, 00003 -> 3rd
    assert r["num_probes"] == 3 and r["num_gallery"] == 3
    assert r["rank-1"] == pytest.approx(100 / 3)
    assert r["rank-5"] == r["rank-10"] == r["rank-20"] == pytest.approx(100.0)
    assert r["mAP"] == pytest.approx(100 * (1 / 3 + 1 + 1 / 3) / 3)


def test_grew_submission_file(tmp_path):
    subjects, conditions, views, x = [], [], [], []
    for i in range(1, 11):
        for cond, off in (("01", 0.0), ("02", 1.0)):
            subjects.append(f"{i:05d}"), conditions.append(cond), views.append(f"g{i}{cond}"), x.append(10 * i + off)
    subjects += ["probe", "probe"]
    conditions += ["03", "03"]
    views += ["vid_a", "vid_b"]
    x += [10.2, 100.9]
    rows = grew_submission_rows(emb(x), subjects, conditions, views)
    assert [r[0] for r in rows] == ["vid_a", "vid_b"]
    # vid_a @10.2: 00001/01 (0.2), 00001/02 (0.8), 00002/01 (9.8), 00002/02 (10.8), ...
    assert rows[0][1] == [f"{i:05d}" for i in range(1, 11) for _ in range(2)]
    # vid_b @100.9: 00010/02 (0.1), 00010/01 (0.9), 00009/02, 00009/01, ...
    assert rows[1][1] == [f"{i:05d}" for i in range(10, 0, -1) for _ in range(2)]
    out = write_grew_submission(rows, tmp_path / "sub.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == GREW_SUBMISSION_HEADER == "videoId," + ",".join(f"rank{k}" for k in range(1, 21))
    assert lines[1] == "vid_a," + ",".join(str(i) for i in range(1, 11) for _ in range(2))
    assert len(lines) == 3
    with pytest.raises(ValueError, match="20"):
        write_grew_submission([("v", ["1"] * 19)], tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


# --------------------------------------------------------------------------------------------------- OU-MVLP
def _oumvlp_case():
    # gallery (01): S1 at 000 and 015, S2 only at 000; probes (00): both subjects at both views
    rows = [("S1", "01", "000", 0.0), ("S1", "01", "015", 0.0), ("S2", "01", "000", 10.0),
            ("S1", "00", "000", 0.1), ("S2", "00", "000", 10.1), ("S1", "00", "015", 0.2), ("S2", "00", "015", 9.9)]
    s, c, v, x = zip(*rows)
    return emb(x), s, c, v


def test_oumvlp_variant_raises_the_figure_as_expected():
    e, s, c, v = _oumvlp_case()
    miss = evaluate_cross_view(e, s, c, v, OUMVLP)
    valid = evaluate_cross_view(e, s, c, v, "ou-mvlp-valid")
    # 000 -> 015: only S1 in the gallery; S2's probe is a miss (OU-MVLP) or left out (OU-MVLP-valid)
    # 015 -> 000: both hits
    assert miss["probe_without_gallery"] == "miss" and valid["probe_without_gallery"] == "exclude"
    assert miss["sets"]["NM"]["per_view"]["000"] == pytest.approx(50.0)
    assert valid["sets"]["NM"]["per_view"]["000"] == pytest.approx(100.0)
    assert miss["sets"]["NM"]["per_view"]["015"] == valid["sets"]["NM"]["per_view"]["015"] == pytest.approx(100.0)
    assert miss["mean"] == pytest.approx(75.0) and valid["mean"] == pytest.approx(100.0)
    # S2's two probes against gallery view 015 (the 000 -> 015 pair and the diagonal 015 -> 015 one)
    assert valid["sets"]["NM"]["num_probe_pairs_excluded"] == 2 and miss["sets"]["NM"]["num_probe_pairs_excluded"] == 0
    # per-subject counts agree with the table under both rules
    for res in (miss, valid):
        ps = res["per_subject"]["sets"]["NM"]
        a, b = 0, 1  # probe view 000, gallery view 015
        hits = sum(ps["hits"][i][a][b] for i in range(2))
        probes = sum(ps["probes"][i][a][b] for i in range(2))
        assert 100 * hits / probes == pytest.approx(res["sets"]["NM"]["table"][a][b])


def test_protocol_names_and_rule_validation():
    assert get_protocol("OU-MVLP") is OUMVLP and get_protocol("oumvlp_valid") is OUMVLP_VALID
    with pytest.raises(ValueError, match="probe_without_gallery"):
        CrossViewProtocol("x", ("a",), {"P": ("b",)}, ("0",), probe_without_gallery="drop")


# ------------------------------------------------------------------------------------------------------ CCPG
def test_ccpg_hand_case():
    # BG set only (others have no gallery in the data): gallery U0_D0, probes U0_D0_BG; views "01_1" -> "01"
    rows = [("A", "U0_D0", "01_1", 0.0), ("A", "U0_D0", "02_1", 0.0), ("B", "U0_D0", "01_1", 10.0),
            ("B", "U0_D0", "02_1", 10.0), ("A", "U0_D0_BG", "01_2", 6.0), ("B", "U0_D0_BG", "02_2", 9.0)]
    s, c, v, x = zip(*rows)
    r = evaluate_ccpg(emb(x), s, c, v)
    # A@01 vs gallery 02: B (4) beats A (6): miss; B@02 vs gallery 01: B hit -> (0 + 100) / 2
    assert list(r["sets"]) == ["BG"] and set(r["skipped_sets"]) == {"CL", "UP", "DN"}
    assert r["sets"]["BG"]["per_view"] == {"01": pytest.approx(0.0), "02": pytest.approx(100.0)}
    assert r["sets"]["BG"]["rank-1"] == pytest.approx(50.0) and r["mean"] == pytest.approx(50.0)
    assert ccpg_view("03_2") == "03"
    # re-identification figures, same-subject same-view gallery entries left out. A@01 (6): A@01 is left out;
    # B@01, B@02 (4, 4) then A@02 (6): first positive at rank 3 -> AP = INP = 1/3. B@02 (9): B@02 left out,
    # B@01 (1) first -> AP = INP = 1. Without the rule A@01 would count (AP (1/3 + 2/4) / 2).
    assert r["reid"] == {"BG": {"rank-1": pytest.approx(50.0), "mAP": pytest.approx(100 * (1 / 3 + 1) / 2),
                                "mINP": pytest.approx(100 * (1 / 3 + 1) / 2), "num_probes": 2, "num_skipped": 0}}


def test_same_view_exclusion_skips_a_probe_left_without_positive():
    from qgait.evaluation.retrieval import evaluate_retrieval

    # probe A@1 whose only gallery sequence of A is at view 1 too: skipped; probe B@1 (5) ranks B@2 second
    r = evaluate_retrieval(emb([0.0, 5.0]), ["A", "B"], emb([0.0, 1.0, 9.0]), ["A", "C", "B"], ranks=(1, 2),
                           probe_views=["1", "1"], gallery_views=["1", "2", "2"])
    assert (r["num_probes"], r["num_skipped"]) == (1, 1)
    assert r["rank-1"] == 0.0 and r["rank-2"] == 100.0 and r["mAP"] == pytest.approx(50.0)  # C (4), B (4), A
    with pytest.raises(ValueError, match="both"):
        evaluate_retrieval(emb([0.0]), ["A"], emb([0.0]), ["A"], probe_views=["1"])


# ------------------------------------------------------------------------------------------------- SUSTech1K
def test_sustech1k_hand_case():
    rows = [("A", "00-nm", "000", 0.0), ("A", "00-nm", "090", 0.0), ("B", "00-nm", "000", 10.0),
            ("B", "00-nm", "090", 10.0),
            ("A", "01-nm", "000", 1.0), ("B", "01-nm", "090", 9.0),   # both hits
            ("A", "02-bg", "000", 6.0), ("B", "02-bg", "090", 9.0)]   # A misses (B at 4), B hits
    s, c, v, x = zip(*rows)
    r = evaluate_sustech1k(emb(x), s, c, v)
    assert r["sets"]["Normal"]["rank-1"] == pytest.approx(100.0)
    assert r["sets"]["Bag"]["rank-1"] == pytest.approx(50.0)
    assert r["sets"]["Overall"]["per_view"] == {"000": pytest.approx(50.0), "090": pytest.approx(100.0)}
    assert r["sets"]["Overall"]["rank-1"] == pytest.approx(75.0)
    assert r["mean"] == pytest.approx((100 + 50 + 75) / 3)
    assert "Night" in r["skipped_sets"] and r["sets"]["Bag"]["probe_conditions"] == ["02-bg"]
