"""qgait.runtime.cpu: the CPU facts every int8 benchmark records."""

from qgait.runtime.cpu import INT8_ISA_FLAGS, cpu_info

VNNI = """processor\t: 0
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16
processor\t: 1
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""

AVX2 = """processor\t: 0
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_vnni_cpu(tmp_path):
    (tmp_path / "cpuinfo").write_text(VNNI)
    info = cpu_info(tmp_path / "cpuinfo")
    assert info["model"] == "AMD EPYC 9B14"
    assert info["int8_isa"] == ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
    assert info["vnni"] is True


def test_avx2_cpu_has_no_vnni(tmp_path):
    (tmp_path / "cpuinfo").write_text(AVX2)
    info = cpu_info(tmp_path / "cpuinfo")
    assert info["model"] == "AMD EPYC 7B12"
    assert info["int8_isa"] == ["avx2"]
    assert info["vnni"] is False


def test_unreadable_cpuinfo_still_answers(tmp_path):
    info = cpu_info(tmp_path / "missing")
    assert info["int8_isa"] == [] and info["vnni"] is False
    assert info["logical_cores"] >= 1 and isinstance(info["model"], str)


def test_this_machine():
    info = cpu_info()
    assert set(info["int8_isa"]) <= set(INT8_ISA_FLAGS)
    assert info["vnni"] == bool({"avx512_vnni", "avx_vnni"} & set(info["int8_isa"]))
