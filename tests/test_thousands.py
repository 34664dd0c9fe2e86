"""Thousands separators as spreadsheets write them, read alike by training and the device: `1,025.7`
beside decimal points, `1.025,7` or `1.025` beside decimal commas. Before, a European file's
`1.025` was read as 1.025 (1000x too small, and its decimal-comma columns skipped), its `1.025,7`
was missing, and the device read a US file's `1,025.7` as missing where training read 1025.7.
Each test failed on the code before."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_module
from runtime.readings import CsvCells, cell_number
from train.data import load_series

_T = pd.date_range("2024-03-01", periods=1200, freq="h")
_W = np.round(900 + 300 * np.sin(2 * np.pi * _T.hour.to_numpy() / 24)
              + np.random.default_rng(0).normal(0, 30, len(_T)), 1)          # watts, 560 to 1290
_C = np.round(20 + 3 * np.sin(2 * np.pi * _T.hour.to_numpy() / 24), 2)


def _eu(v, decimals=1):
    return f"{v:,.{decimals}f}".translate(str.maketrans(",.", ".,"))


FILES = {   # name: (delimiter, the power cells, the temperature cells, the power values they hold)
    "US, decimal points": (",", [f'"{v:,.1f}"' for v in _W], [f"{c:.2f}" for c in _C], _W),
    "European, decimal commas": (";", [_eu(v) for v in _W], [_eu(c, 2) for c in _C], _W),
    "European, whole numbers": (";", [_eu(v, 0) for v in _W], [_eu(c, 2) for c in _C], np.round(_W)),
}


def _write(path, name):
    sep, power, temp, _ = FILES[name]
    path.write_text("\n".join([sep.join(("time", "power", "temp"))] + [
        sep.join((t, p, c)) for t, p, c in zip(_T.strftime("%Y-%m-%d %H:%M"), power, temp)]) + "\n")
    return str(path)


@pytest.mark.parametrize("name", FILES)
def test_training_reads_each_thousand_as_written(tmp_path, name):
    s = load_series(_write(tmp_path / "f.csv", name), "power")
    assert s.features == ["power", "temp"], s.report.skipped_columns
    np.testing.assert_allclose(s.target, FILES[name][3])
    assert s.report.thousands == {"power": int(np.sum(FILES[name][3] >= 1000))}


def test_a_unit_after_a_thousand_and_a_leading_zero_read_alike_by_both(tmp_path):
    """`1.025 kWh` beside decimal commas: training read 1.025 (the unit kept the thousands pattern
    from matching), the device 1025; `0.125` is no thousand (it read as 125 on both)."""
    path = tmp_path / "u.csv"
    cells = ["1.025 kWh", "0,5 kWh", "2.050,5 kWh"] * 400
    path.write_text("time;energy;other\n" + "".join(
        f"{t};{c};{'0.125' if i == 700 else '1,5'}\n" for i, (t, c) in enumerate(zip(_T.strftime("%Y-%m-%d %H:%M"), cells))))
    s = load_series(str(path), "energy")
    np.testing.assert_allclose(s.target[:3], [1025, 0.5, 2050.5])
    assert s.inputs[700, s.features.index("other")] == 0.125
    assert [cell_number(c, ",", "kWh", ".") for c in cells[:3]] == [1025, 0.5, 2050.5]
    assert cell_number("0.125", ",", thousands=".") == 0.125 and cell_number("0,125,000") != 125000


def test_the_device_reads_them_by_the_bundles_decimal_mark():
    assert cell_number("1,025.7") == 1025.7 and cell_number("-12,345,678") == -12345678
    assert cell_number("1.025,7", ",", thousands=".") == 1025.7 and cell_number("1.025", ",", thousands=".") == 1025
    assert cell_number("1.025", ",") == 1.025                           # a decimal comma guessed: no thousands
    for cell in ("1,25.7", "1.0250,7", "12,34"):                        # no groups of three: not a thousand
        assert np.isnan(cell_number(cell, ",", thousands=".")) or cell_number(cell, ",", thousands=".") < 100
    eu = {"features": [{"name": "power"}], "source": {"data_spec": {"delimiter": ";", "decimal": ","}}}
    cells = CsvCells(eu)
    cells.header("time;power", "f.csv")
    assert cells.values(["x", "1.025"]) == [1025.0]
    cells = CsvCells({**eu, "source": {}})                              # trained on `,` and `.`; a `;` file here
    cells.header("time;power", "f.csv")
    assert cells.values(["x", "1.025"]) == [1.025]


def test_stream_reads_the_file_training_read(tmp_path):
    """Trained without flags, streamed without flags: every reading read, none imputed (the European
    file's cells on the device: the CsvCells test above)."""
    src, ck = _write(tmp_path / "f.csv", "US, decimal points"), str(tmp_path / "m.pt")
    run_module("train", "--data", src, "--target", "power", "--epochs", "1", "--hidden", "4", "--quiet", "--out", ck)
    run_module("export", ck, "--out", str(tmp_path / "b"), "--formats", "onnx")
    p = run_module("runtime", "stream", str(tmp_path / "b"), "--input", src, "--output", str(tmp_path / "out.csv"))
    stats = json.loads(p.stderr.strip().splitlines()[-1])
    assert stats["readings"] == len(_T) and stats["imputed"] == 0, p.stderr[-600:]
