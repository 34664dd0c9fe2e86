"""Training input errors (issue 25, cases 7, 9-13): one line naming the problem and the option that reads the file."""
import warnings
import zipfile

import numpy as np
import pytest

from conftest import run_module
from train.data import DataError, load_series, prepare_series

N = 60


def _table(sep=",", dec=".", times=None, header="date,T1,RH_1", n=N):
    """A tiny sensor CSV's text: 10-minute times, a temperature and a humidity."""
    rng = np.random.default_rng(0)
    times = times or [f"2024-01-{1 + i // 144:02d}T{i // 6 % 24:02d}:{10 * (i % 6):02d}:00" for i in range(n)]
    rows = [f"{t},{20 + rng.standard_normal():.2f},{40 + rng.standard_normal():.2f}" for t in times]
    text = "\n".join([header] + rows) + "\n"
    return text.replace(",", "\0").replace(".", dec).replace("\0", sep) if (sep, dec) != (",", ".") else text


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return str(path)


def _error(path, **kw) -> str:
    with pytest.raises(DataError) as e:
        load_series(path, "T1", **kw)
    msg = str(e.value)
    assert "\n" not in msg.replace("\\n", "")          # one line
    return msg


@pytest.mark.parametrize("bad", ["\n", "\r", "\x1b", "\u202e"])
def test_a_column_name_with_a_control_character_is_refused(tmp_path, bad):
    path = _write(tmp_path, _table(header=f'date,"T1{bad}x",RH_1'))
    msg = _error(path)
    assert repr(f"T1{bad}x") in msg and "control character" in msg


def test_a_nul_in_a_dataframe_column_name_is_refused():
    import pandas as pd
    df = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=N, freq="10min"), "T1": np.arange(N) * 1.0,
                       "RH\x00_1": np.ones(N)})
    with pytest.raises(DataError, match=r"'RH\\x00_1' contains the control character"):
        prepare_series(df, "T1")


def test_duplicate_column_names_are_refused_naming_them(tmp_path):
    msg = _error(_write(tmp_path, _table(header="date,T1,T1")))
    assert "'T1' appear more than once" in msg


def test_mixed_naive_and_aware_times_name_the_row(tmp_path):
    times = [f"2024-01-01T{i // 6:02d}:{10 * (i % 6):02d}:00" + ("+01:00" if i >= 3 else "") for i in range(N)]
    msg = _error(_write(tmp_path, _table(times=times)))
    assert "mixes naive and aware times" in msg and "data row 4 ('2024-01-01T00:30:00+01:00')" in msg


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)


@pytest.mark.parametrize("kind,make", [
    ("an Excel workbook", lambda p: _zip(p, {"[Content_Types].xml": "<Types/>", "xl/workbook.xml": "<workbook/>"})),
    ("a zip archive", lambda p: _zip(p, {"a.csv": "x\n1\n", "b.csv": "y\n2\n"})),
    ("an Excel workbook (.xls)", lambda p: p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600))),
    ("a binary file", lambda p: p.write_bytes(bytes(range(256)) * 4)),
    ("UTF-16 text (without a byte-order mark)", lambda p: p.write_bytes("time,T1\n2024-01-01,1\n".encode("utf-16-le"))),
    ("gzip-compressed (a name ending .csv.gz reads it)", lambda p: p.write_bytes(__import__("gzip").compress(b"t,x\n"))),
])
def test_a_binary_file_is_named_as_such(tmp_path, kind, make):
    make(tmp_path / "data.csv")
    msg = _error(str(tmp_path / "data.csv"))
    assert f"is {kind}, expected a CSV text file (export it as CSV" in msg


def test_an_excel_workbook_is_one_line_from_the_cli(tmp_path):
    _zip(tmp_path / "data.csv", {"[Content_Types].xml": "<Types/>", "xl/workbook.xml": "<workbook/>"})
    p = run_module("train", "--data", str(tmp_path / "data.csv"), "--target", "T1", "--out", str(tmp_path / "m.pt"),
                   check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "is an Excel workbook" in p.stderr


def test_a_semicolon_file_with_decimal_commas_is_read_as_written(tmp_path):
    """`;` and decimal commas, as European spreadsheets export them, and tabs: read without flags (the
    delimiter that splits the header and the lines below it alike; decimal commas where the numbers
    show commas and no points), said in the report. Before, refused with a hint to pass both."""
    path = _write(tmp_path, _table(sep=";", dec=","))
    want = load_series(_write(tmp_path, _table(), "plain.csv"), "T1")
    for kw in ({}, {"delimiter": ";"}, {"delimiter": ";", "decimal": ","}):
        s = load_series(path, "T1", **kw)
        assert s.features == ["T1", "RH_1"] and np.array_equal(s.inputs, want.inputs), kw
        assert (s.report.delimiter, s.report.decimal) == (";", ",")
    assert "read with delimiter ';' and decimal ','" in "\n".join(s.report.lines())
    tab = load_series(_write(tmp_path, _table(sep="\t"), "tab.csv"), "T1")
    assert np.array_equal(tab.inputs, want.inputs) and (tab.report.delimiter, tab.report.decimal) == ("\t", ".")
    assert "column 'T1' is not numeric" in _error(path, decimal=".") and "pass --decimal ," in _error(path, decimal=".")


def test_the_cli_trains_on_a_semicolon_file(tmp_path):
    path = _write(tmp_path, _table(sep=";", dec=",", n=600))
    p = run_module("train", "--data", path, "--target", "T1", "--delimiter", ";", "--decimal", ",", "--epochs", "1",
                   "--hidden", "4", "--horizon", "2", "--calendar", "none", "--quiet", "--out", str(tmp_path / "m.pt"))
    assert "features (2): T1, RH_1" in p.stdout
    bad = run_module("train", "--data", path, "--target", "T1", "--delimiter", ",", "--decimal", ",", check=False)
    assert bad.returncode == 2 and "--decimal ',' is also the field --delimiter" in bad.stderr
    comma = _write(tmp_path, _table(n=600), "comma.csv")
    bad = run_module("train", "--data", comma, "--target", "T1", "--decimal", ",", check=False)
    assert bad.returncode == 2 and "which --decimal , names as the decimal mark too" in bad.stderr


@pytest.mark.parametrize("above", ["Weather station Alpha, logger 7\n",                 # narrower than the table
                                   "Station,Alpha,serial,7,fw,2\n",                    # wider
                                   "Station Alpha,serial 7,firmware 2\nexported 2024-01-02\n"])   # as wide, two lines
def test_metadata_lines_above_the_header_are_skipped_as_the_device_skips_them(tmp_path, above):
    """The device's stream finds its header as the first of the first lines naming its columns; training
    stopped with a --skip-rows hint instead (the README said it read such a file with no flags)."""
    want = load_series(_write(tmp_path, _table(), "plain.csv"), "T1")
    s = load_series(_write(tmp_path, above + _table()), "T1")
    assert s.features == ["T1", "RH_1"] and np.array_equal(s.inputs, want.inputs)
    n = above.count("\n")
    assert f"{n} line(s) above the header skipped (a logger's metadata)" in "\n".join(s.report.lines())
    assert np.array_equal(load_series(_write(tmp_path, above + _table(), "again.csv"), "T1", skip_rows=n).inputs,
                          want.inputs)


def test_the_readmes_logger_export_trains_and_streams_with_no_flags(tmp_path):
    """README: `Datum;Uhrzeit;Temperatur` with day-first dates, decimal commas, units in the cells and a
    metadata line above the header. Training said `pass --skip-rows 2`, which then failed (it counted
    the header's fields by the comma, the decimal mark)."""
    rng = np.random.default_rng(3)
    t = [f"{1 + i // 144:02d}.05.2016;{i // 6 % 24:02d}:{10 * (i % 6):02d}" for i in range(600)]
    rows = [f"{d};{24 + np.sin(i / 20) + 0.1 * rng.standard_normal():.1f} °C;{38 + rng.standard_normal():.1f} %"
            .replace(".", ",") for i, d in enumerate(t)]
    path = _write(tmp_path, "Logger TX-20 Serial 4711\nDatum;Uhrzeit;Temperatur;Feuchte\n" + "\n".join(rows) + "\n")
    ck = str(tmp_path / "m.pt")
    p = run_module("train", "--data", path, "--target", "Temperatur", "--epochs", "1", "--hidden", "4", "--horizon", "2",
                   "--calendar", "none", "--out", ck)
    assert "1 line(s) above the header skipped" in p.stdout and "Temperatur" in p.stdout
    run_module("export", ck, "--out", str(tmp_path / "b"))
    out = tmp_path / "f.csv"
    p = run_module("runtime", "stream", str(tmp_path / "b"), "--input", path, "--output", str(out))
    assert '"readings": 600' in p.stderr and '"imputed": 0' in p.stderr, p.stderr[-400:]


def test_a_target_named_in_no_line_near_the_top_gets_the_hint(tmp_path):
    msg = _error(_write(tmp_path, "Weather station Alpha, logger 7\n" + _table(header="date,T2,RH_1")))
    assert "line 1 has 2 field(s) and the lines below it 3" in msg and "pass --skip-rows 1" in msg


def test_no_library_warning_reaches_the_terminal(tmp_path):
    """A metadata line as wide as the data, over a file long enough for pandas' chunked reading:
    pandas warned (DtypeWarning), then the metadata was named as the columns."""
    import pandas as pd
    n = 300_000
    t = pd.date_range("2024-01-01", periods=n, freq="min").strftime("%Y-%m-%dT%H:%M")
    body = pd.DataFrame({"time": t, "T1": 20 + np.sin(np.arange(n) / 50), "RH_1": 40 + np.arange(n) % 7})
    path = _write(tmp_path, "Station Alpha,serial 7,firmware 2\n" + body.to_csv(index=False))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        s = load_series(path, "T1")
    assert not seen, [str(w.message)[:80] for w in seen]
    assert s.report.above_header == 1 and len(s.target) == n


@pytest.mark.parametrize("unit", [1, 1000, 10**6, 10**9])
def test_epoch_times_in_training_follow_the_devices_rule(tmp_path, unit):
    """Epoch seconds (or milliseconds above 1e11) as the device reads them, and the microseconds and
    nanoseconds of a time-series database's export: pandas read integer times as nanoseconds, so an
    hourly logger export of seconds trained at a 3.6 µs period, with forecast columns named
    value+0.0036ms and no calendar inputs."""
    start = 1_700_000_000                       # 2023-11-14T22:13:20Z
    times = [str((start + 600 * i) * unit) for i in range(N)]
    s = load_series(_write(tmp_path, _table(times=times)), "T1")
    assert s.period_s == pytest.approx(600.0)
    assert s.start_s == pytest.approx(start)


@pytest.mark.parametrize("flag,value", [
    ("--max-minutes", "nan"), ("--max-minutes", "-1"), ("--epochs", "-5"), ("--batch", "0"), ("--window", "0"),
    ("--chunk", "1"), ("--max-gap", "-1"), ("--seed", "-1"), ("--threads", "0"), ("--eval-window", "0"),
    ("--clip", "nan"), ("--weight-decay", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--patience", "0"),
    ("--accum", "0"), ("--horizon", "0"), ("--layers", "0"), ("--utc-offset-hours", "nan"),
])
def test_a_number_flag_out_of_its_range_is_one_usage_line(flag, value):
    """Before: --threads 0 and --eval-window 0 were tracebacks, --batch 0 'range() arg 3 must not be
    zero', --epochs -5 and --chunk 1 saved an untrained checkpoint, nan budgets were ignored."""
    from train.__main__ import parser
    with pytest.raises(SystemExit) as e:
        from train.__main__ import _check_flags
        _check_flags(parser().parse_args(["--data", "daphnet", flag, value]))
    assert e.value.code == 2
