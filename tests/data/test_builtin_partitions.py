"""The built-in partitions of Gait3D, GREW, OU-MVLP, CCPG and SUSTech1K: sizes, provenance, probe list."""

import pytest

from qgait.data.partition import BUILTIN_PARTITIONS, load_partition

# name -> (training identities, test identities), as in OpenGait's datasets/<Name>/<Name>.json
SIZES = {"oumvlp": (5153, 5154), "grew": (20000, 6001), "gait3d": (3000, 1000), "ccpg": (100, 100),
         "sustech1k": (250, 800), "casia-b": (74, 50)}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_sizes_and_provenance(name):
    p = load_partition(name)
    assert (len(p.train), len(p.test)) == SIZES[name]
    assert not set(p.train) & set(p.test)
    if name != "casia-b":
        assert p.provenance["repository"] == "ShiqiYu/OpenGait" and len(p.provenance["commit"]) == 40
        assert p.provenance["path"].startswith("datasets/")


def test_every_builtin_name_loads():
    for name in BUILTIN_PARTITIONS:
        load_partition(name)
    assert load_partition("OU-MVLP").test == load_partition("oumvlp").test


def test_gait3d_probe_list_has_one_probe_per_test_identity():
    p = load_partition("gait3d")
    assert len(p.probe) == 1000
    assert [name.split("-")[0] for name in p.probe] == p.test
    assert p.probe[0] == "0002-camid33_videoid2-seq0" and p.probe[-1] == "3064-camid29_videoid1-seq0"
    assert sorted(p.train + p.test) == [f"{i:04d}" for i in range(4000)]


def test_known_facts_of_the_lists():
    assert load_partition("oumvlp").train[:2] == ["00001", "00003"] and load_partition("oumvlp").test[-1] == "10307"
    grew = load_partition("grew")
    assert grew.train[-1] == "20000train" and grew.test[-1] == "probe"
    sus = load_partition("sustech1k")
    assert "0352" not in sus.train + sus.test and sus.train[:3] == ["0000", "0002", "0005"]


def test_source_must_be_an_object(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{"TRAIN_SET": ["1"], "TEST_SET": ["2"], "SOURCE": "somewhere"}')
    with pytest.raises(ValueError, match="SOURCE must be an object"):
        load_partition(f)
