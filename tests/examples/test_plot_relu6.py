"""examples/plot_relu6.py writes a PNG and reports the derivative at the kinks."""

import plot_relu6


def test_writes_a_png_with_the_chosen_kink_values(tmp_path, capsys):
    out = tmp_path / "relu6.png"
    assert plot_relu6.main(["--grad-at-zero", "1", "--grad-at-six", "0.5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "relu6'(0) = 1, relu6'(6) = 0.5" in capsys.readouterr().out
