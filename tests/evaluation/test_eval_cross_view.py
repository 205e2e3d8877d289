"""evaluate_cross_view: tiny synthetic datasets with hand-derived rank-1 tables."""

import dataclasses
import math

import pytest
import torch

from qgait.evaluation import CASIA_B, OUMVLP, CrossViewProtocol, evaluate_cross_view, get_protocol
from qgait.evaluation import cross_view as cross_view_module

TOY = CrossViewProtocol("toy", ("nm-01",), {"NM": ("nm-05",), "BG": ("bg-01",)}, ("000", "090"))

# (subject, condition, view, value): 1-channel embeddings, so the distance is |a - b|.
GALLERY = [
    ("s1", "nm-01", "000", 0.0), ("s2", "nm-01", "000", 10.0), ("s3", "nm-01", "000", 20.0),
    ("s1", "nm-01", "090", 100.0), ("s2", "nm-01", "090", 110.0), ("s3", "nm-01", "090", 120.0),
]
NM = [
    # view 000 probes lie next to the gallery of view 090:
    #   vs gallery 090: 101->100 s1, 111->110 s2, 121->120 s3: 3/3 = 100
    #   vs gallery 000 (the diagonal): all nearest 20 (s3): 1/3 = 33.3
    ("s1", "nm-05", "000", 101.0), ("s2", "nm-05", "000", 111.0), ("s3", "nm-05", "000", 121.0),
    # view 090 probes lie next to the gallery of view 000:
    #   vs gallery 000: 2->0, 12->10, 22->20: 100; vs gallery 090 (diagonal): all nearest 100 (s1): 33.3
    ("s1", "nm-05", "090", 2.0), ("s2", "nm-05", "090", 12.0), ("s3", "nm-05", "090", 22.0),
]
BG = [
    # only view 000: vs gallery 000 (diagonal): 0.4->0, 10.4->10, 25->20: 100; vs gallery 090: all s1: 33.3
    ("s1", "bg-01", "000", 0.4), ("s2", "bg-01", "000", 10.4), ("s3", "bg-01", "000", 25.0),
]
IGNORED = [
    ("s1", "cl-01", "000", 20.0),  # condition in no set of the protocol
    ("s2", "nm-05", "045", 0.0),  # view not in the protocol
]
THIRD = 100.0 / 3


def dataset(rows, parts=2):
    subjects, conditions, views, values = zip(*rows)
    emb = torch.tensor(values, dtype=torch.float32)[:, None, None].expand(len(rows), 1, parts).contiguous()
    return emb, list(subjects), list(conditions), list(views)


def test_hand_computed_tables_and_identical_view_exclusion():
    r = evaluate_cross_view(*dataset(GALLERY + NM + BG + IGNORED), protocol=TOY)
    assert r["protocol"] == "toy" and r["metric"] == "euc"
    assert r["views"] == ["000", "090"]
    assert r["num_sequences"] == 17 and r["num_gallery"] == 6
    nm, bg = r["sets"]["NM"], r["sets"]["BG"]
    assert nm["num_probes"] == 6 and bg["num_probes"] == 3
    # the table stores the diagonal ...
    assert nm["table_includes_diagonal"] is True and nm["diagonal_excluded"] is True
    assert nm["table"] == [[pytest.approx(THIRD), pytest.approx(100.0)], [pytest.approx(100.0), pytest.approx(THIRD)]]
    # ... but the means leave it out: 100, where including it would give (33.3 + 100) / 2 = 66.7
    assert nm["per_view"] == {"000": pytest.approx(100.0), "090": pytest.approx(100.0)}
    assert nm["rank-1"] == pytest.approx(100.0)
    assert nm["skipped_pairs"] == []


def test_missing_pair_is_skipped_not_zero():
    r = evaluate_cross_view(*dataset(GALLERY + NM + BG), protocol=TOY)
    bg = r["sets"]["BG"]
    assert bg["table"] == [[pytest.approx(100.0), pytest.approx(THIRD)], [None, None]]
    assert bg["skipped_pairs"] == [["090", "000"], ["090", "090"]]
    assert bg["per_view"] == {"000": pytest.approx(THIRD), "090": None}
    assert bg["rank-1"] == pytest.approx(THIRD)  # not (33.3 + 0) / 2
    assert r["mean"] == pytest.approx((100.0 + THIRD) / 2)  # 66.7
    assert r["sets_in_mean"] == ["NM", "BG"]


def test_diagonal_included_when_protocol_says_so():
    with_diag = CrossViewProtocol("toy", ("nm-01",), {"NM": ("nm-05",), "BG": ("bg-01",)}, ("000", "090"), False)
    r = evaluate_cross_view(*dataset(GALLERY + NM + BG), protocol=with_diag)
    assert r["sets"]["NM"]["diagonal_excluded"] is False
    assert r["sets"]["NM"]["per_view"]["000"] == pytest.approx((THIRD + 100.0) / 2)
    assert r["sets"]["NM"]["rank-1"] == pytest.approx((THIRD + 100.0) / 2)
    assert r["sets"]["BG"]["rank-1"] == pytest.approx((100.0 + THIRD) / 2)


def test_missing_gallery_view():
    gallery_000 = [g for g in GALLERY if g[2] == "000"]
    r = evaluate_cross_view(*dataset(gallery_000 + NM + BG), protocol=TOY)
    nm, bg = r["sets"]["NM"], r["sets"]["BG"]
    # column 090 has no gallery: skipped; probe view 000 keeps only its diagonal pair -> no mean
    assert nm["table"] == [[pytest.approx(THIRD), None], [pytest.approx(100.0), None]]
    assert nm["per_view"] == {"000": None, "090": pytest.approx(100.0)}
    assert nm["rank-1"] == pytest.approx(100.0)
    # BG: only the diagonal pair (000, 000) exists -> the set has no rank-1 and is left out of the mean
    assert bg["rank-1"] is None
    assert r["sets_in_mean"] == ["NM"] and r["mean"] == pytest.approx(100.0)


def test_probe_whose_subject_lacks_the_gallery_view_counts_as_miss():
    rows = [
        ("s1", "nm-01", "000", 0.0), ("s2", "nm-01", "000", 10.0), ("s1", "nm-01", "090", 100.0),  # no s2 at 090
        ("s1", "nm-05", "000", 101.0), ("s2", "nm-05", "000", 111.0),  # vs gallery 090: s1 hit, s2 miss: 50
        ("s1", "bg-01", "090", 1.0),  # vs gallery 000: hit: 100
    ]
    r = evaluate_cross_view(*dataset(rows), protocol=TOY)
    assert r["sets"]["NM"]["table"][0][1] == pytest.approx(50.0)
    assert r["sets"]["NM"]["rank-1"] == pytest.approx(50.0)


def test_ties_go_to_the_first_gallery_sequence():
    rows = [
        ("s1", "nm-01", "000", 0.0), ("s2", "nm-01", "000", 2.0),  # probe at 1: tie, s1 listed first
        ("s2", "nm-05", "090", 1.0),
    ]
    r = evaluate_cross_view(*dataset(rows), protocol=TOY)
    assert r["sets"]["NM"]["table"][1][0] == 0.0


def test_small_blocks_give_the_same_result(monkeypatch):
    monkeypatch.setattr(cross_view_module, "_CHUNK", 2)
    r = evaluate_cross_view(*dataset(GALLERY + NM + BG), protocol=TOY)
    assert r["sets"]["NM"]["rank-1"] == pytest.approx(100.0)
    assert r["sets"]["BG"]["table"][0] == [pytest.approx(100.0), pytest.approx(THIRD)]


def test_cosine_metric():
    # 2-D single-part embeddings: subject = direction; probe views rotated slightly
    rows = [("s1", "nm-01", "000", (1.0, 0.0)), ("s2", "nm-01", "000", (0.0, 1.0)),
            ("s1", "nm-05", "090", (3.0, 0.5)), ("s2", "nm-05", "090", (0.2, 2.0))]
    subjects, conditions, views, values = zip(*rows)
    emb = torch.tensor(values)[:, :, None]
    r = evaluate_cross_view(emb, subjects, conditions, views, protocol=TOY, metric="cos")
    assert r["metric"] == "cos" and r["sets"]["NM"]["table"][1][0] == 100.0


def synthetic_casia(subjects=("075", "076", "077"), drop=()):
    """Every (subject, condition, view) of CASIA-B; embedding = subject centre + a small view offset."""
    conds = [f"nm-0{i}" for i in range(1, 7)] + ["bg-01", "bg-02", "cl-01", "cl-02"]
    rows = []
    for s_i, s in enumerate(subjects):
        for c in conds:
            for v_i, v in enumerate(CASIA_B.views):
                if (s, v) in drop:
                    continue
                e = torch.zeros(len(subjects) + 1, 2)
                e[s_i] = 10.0
                e[-1] = 0.1 * v_i  # view-dependent, far smaller than the subject separation
                rows.append((e, s, c, v))
    emb, subj, cond, view = zip(*rows)
    return torch.stack(emb), list(subj), list(cond), list(view)


def test_casia_b_protocol_end_to_end():
    r = evaluate_cross_view(*synthetic_casia())
    assert r["protocol"] == "CASIA-B"
    assert list(r["sets"]) == ["NM", "BG", "CL"]
    assert r["num_gallery"] == 3 * 4 * 11 and r["num_sequences"] == 3 * 10 * 11
    for res in r["sets"].values():
        assert len(res["table"]) == 11 and all(len(row) == 11 for row in res["table"])
        assert all(v == 100.0 for row in res["table"] for v in row)
        assert res["rank-1"] == 100.0 and res["skipped_pairs"] == []
    assert r["sets"]["NM"]["num_probes"] == 3 * 2 * 11
    assert r["mean"] == 100.0


def test_casia_b_subject_missing_a_view():
    # subject 076 lacks view 000 entirely (as CASIA-B subject 005 does). Its probes of the other views are
    # matched against gallery view 000, where it has no sequence: 2 misses out of 6 probes -> 66.7.
    # Probe view 000 (075 and 077 only) stays 100 everywhere.
    r = evaluate_cross_view(*synthetic_casia(drop={("076", "000")}))
    assert r["num_gallery"] == 3 * 4 * 11 - 4
    nm = r["sets"]["NM"]
    assert nm["num_probes"] == 3 * 2 * 11 - 2
    assert nm["table"][0] == [100.0] * 11
    for a in range(1, 11):
        assert nm["table"][a][0] == pytest.approx(200 / 3)
        assert nm["table"][a][1:] == [100.0] * 10
    per_other_view = (9 * 100.0 + 200 / 3) / 10  # 96.67
    assert nm["per_view"]["000"] == 100.0 and nm["per_view"]["018"] == pytest.approx(per_other_view)
    assert nm["rank-1"] == pytest.approx((100.0 + 10 * per_other_view) / 11)  # 96.97
    assert r["mean"] == pytest.approx((100.0 + 10 * per_other_view) / 11)


def test_protocol_definitions_and_lookup():
    assert CASIA_B.views == ("000", "018", "036", "054", "072", "090", "108", "126", "144", "162", "180")
    assert CASIA_B.probe_sets == {"NM": ("nm-05", "nm-06"), "BG": ("bg-01", "bg-02"), "CL": ("cl-01", "cl-02")}
    assert CASIA_B.gallery_conditions == ("nm-01", "nm-02", "nm-03", "nm-04")
    assert len(OUMVLP.views) == 14 and OUMVLP.probe_sets == {"NM": ("00",)} and OUMVLP.gallery_conditions == ("01",)
    for name in ("CASIA-B", "casia-b", "casia_b", "CasiaB"):
        assert get_protocol(name) is CASIA_B
    assert get_protocol("ou-mvlp") is OUMVLP and get_protocol("OUMVLP") is OUMVLP
    assert len({CASIA_B, OUMVLP, get_protocol("casia-b")}) == 2  # hashable despite the dict field
    with pytest.raises(dataclasses.FrozenInstanceError):
        CASIA_B.name = "x"
    with pytest.raises(ValueError, match="known protocols are.*CASIA-B.*OU-MVLP"):
        get_protocol("GREW")
    r = evaluate_cross_view(*synthetic_casia(subjects=("a", "b")), protocol="casia-b")
    assert r["protocol"] == "CASIA-B"


def test_protocol_validation():
    with pytest.raises(ValueError, match="both"):
        CrossViewProtocol("bad", ("nm-01",), {"NM": ("nm-01",)}, ("000",))
    with pytest.raises(ValueError, match="unique"):
        CrossViewProtocol("bad", ("nm-01",), {"NM": ("nm-05",)}, ("000", "000"))
    with pytest.raises(ValueError, match="empty"):
        CrossViewProtocol("bad", (), {"NM": ("nm-05",)}, ("000",))
    with pytest.raises(ValueError, match="probe_sets"):
        CrossViewProtocol("bad", ("nm-01",), {}, ("000",))


def test_bad_input_raises_value_error():
    emb, subj, cond, view = dataset(GALLERY + NM)
    with pytest.raises(ValueError, match="subjects has 11"):
        evaluate_cross_view(emb, subj[:-1], cond, view, protocol=TOY)
    with pytest.raises(ValueError, match="views has 11"):
        evaluate_cross_view(emb, subj, cond, view[:-1], protocol=TOY)
    with pytest.raises(ValueError, match=r"\[n, c, p\]"):
        evaluate_cross_view(emb[:, 0], subj, cond, view, protocol=TOY)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_cross_view(torch.full_like(emb, math.nan), subj, cond, view, protocol=TOY)
    with pytest.raises(ValueError, match="no gallery sequence"):
        evaluate_cross_view(emb, subj, cond, [str(int(v)) for v in view], protocol=TOY)  # "0" is not "000"
    with pytest.raises(ValueError, match="no probe sequence"):
        evaluate_cross_view(*dataset(GALLERY), protocol=TOY)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_cross_view(emb, subj, cond, view, protocol=TOY, metric="l2")
    with pytest.raises(ValueError, match="no \\(probe view, gallery view\\) pair"):
        evaluate_cross_view(*dataset([GALLERY[0], NM[0]]), protocol=TOY)  # only the (000, 000) pair


# --- per-subject counts (result["per_subject"]) ---------------------------------------------------------


def test_per_subject_counts_hand_computed():
    import json

    r = evaluate_cross_view(*dataset(GALLERY + NM + BG + IGNORED), protocol=TOY)
    ps = r["per_subject"]
    assert ps["protocol"] == "toy" and ps["views"] == ["000", "090"] and ps["exclude_identical_view"] is True
    assert ps["subjects"] == ["s1", "s2", "s3"]  # probe subjects, sorted
    assert list(ps["sets"]) == ["NM", "BG"]
    nm, bg = ps["sets"]["NM"], ps["sets"]["BG"]
    # NM: one probe per subject and view; 000 vs 000 all go to s3, 090 vs 090 all go to s1
    assert nm["probes"] == [[[1, 1], [1, 1]]] * 3
    assert nm["hits"] == [[[0, 1], [1, 1]], [[0, 1], [1, 0]], [[1, 1], [1, 0]]]
    # BG: probes only at view 000; vs gallery 090 all go to s1
    assert bg["probes"] == [[[1, 1], [0, 0]]] * 3
    assert bg["hits"] == [[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[1, 0], [0, 0]]]
    assert json.loads(json.dumps(ps)) == ps  # plain ints and lists
    assert all(type(v) is int for s in ps["sets"].values() for k in ("hits", "probes")
               for subj in s[k] for row in subj for v in row)


def test_per_subject_counts_zero_for_a_gallery_view_without_gallery():
    gallery_000 = [g for g in GALLERY if g[2] == "000"]
    r = evaluate_cross_view(*dataset(gallery_000 + NM + BG), protocol=TOY)
    for counts in r["per_subject"]["sets"].values():
        for key in ("hits", "probes"):
            assert all(row[1] == 0 for subj in counts[key] for row in subj)  # column 090 skipped
    assert r["per_subject"]["sets"]["NM"]["probes"] == [[[1, 0], [1, 0]]] * 3


def test_per_subject_counts_sum_to_the_table_and_protocol_flag():
    with_diag = CrossViewProtocol("toy", ("nm-01",), {"NM": ("nm-05",), "BG": ("bg-01",)}, ("000", "090"), False)
    r = evaluate_cross_view(*synthetic_casia(drop={("076", "000")}))
    r2 = evaluate_cross_view(*dataset(GALLERY + NM + BG), protocol=with_diag)
    assert r2["per_subject"]["exclude_identical_view"] is False
    for res in (r, r2):
        ps = res["per_subject"]
        for name, counts in ps["sets"].items():
            table = res["sets"][name]["table"]
            for a in range(len(ps["views"])):
                for b in range(len(ps["views"])):
                    hits = sum(s[a][b] for s in counts["hits"])
                    probes = sum(s[a][b] for s in counts["probes"])
                    if table[a][b] is None:
                        assert probes == 0 and hits == 0
                    else:
                        assert table[a][b] == 100.0 * hits / probes
            n_probes = sum(row[0] for s in counts["probes"] for row in s)  # gallery view 000 exists in both
            assert n_probes == res["sets"][name]["num_probes"]


def test_per_subject_mixed_and_numpy_subject_ids():
    import json

    import numpy as np

    rows = [(1, "nm-01", "000", 0.0), ("b", "nm-01", "000", 10.0), (1, "nm-05", "090", 1.0), ("b", "nm-05", "090", 9.0)]
    r = evaluate_cross_view(*dataset(rows), protocol=TOY)
    assert r["per_subject"]["subjects"] == [1, "b"]  # not comparable: sorted by (type name, str)
    emb, _, cond, view = dataset(rows)
    r = evaluate_cross_view(emb, np.array([7, 3, 7, 3]), cond, view, protocol=TOY)
    assert r["per_subject"]["subjects"] == [3, 7]
    json.dumps(r["per_subject"])
