"""qgait.atomic: atomic writes and figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from qgait.atomic import atomic_write, save_figure  # noqa: E402


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left behind


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        (tmp_path / "b.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.bin").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o640


def test_save_figure_writes_png_and_closes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "sub" / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.png"]


def test_save_figure_refuses_unknown_suffix(tmp_path):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="f.xyz"):
        save_figure(fig, tmp_path / "f.xyz")
    assert not (tmp_path / "f.xyz").exists()
    assert plt.fignum_exists(fig.number)
    plt.close(fig)
