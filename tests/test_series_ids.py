"""Series ids from outside (a long table's node column, file names, Parquet partitions) as a logger
export or a careless folder gives them: each id kept exactly as written, never merged, dropped or
rendered into a table unescaped, and every series that cannot be scored said so."""
import os

import numpy as np
import pandas as pd
import pytest

from test_many_series import _long, _room
from train.data import DataError, load_series
from train.many import prepare_many
from train.prepare import prepare


def _ids(s) -> list:
    return [p.id for p in s.parts]


def test_numeric_looking_ids_stay_apart(tmp_path):
    """Sensors 1, 01 and 1.0 are three sensors: read as numbers, they merged into one series and
    its duplicate timestamps were dropped."""
    path = tmp_path / "num.csv"
    _long(_room("1"), _room("01", seed=1), _room("1.0", seed=2)).to_csv(path, index=False)
    s = load_series(str(path), "value", series_col="node")
    assert _ids(s) == ["01", "1", "1.0"]
    assert [p.stop - p.start for p in s.parts] == [600] * 3 and s.report.duplicate_timestamps == 0


def test_ids_that_look_missing_are_ids_and_rows_without_one_are_counted(tmp_path):
    """NA, null, None and nan name sensors (pandas read them as missing and the series vanished);
    a row with an empty id belongs to no series: left out, and the report says how many."""
    rooms = [_room(name, seed=i) for i, name in enumerate(("NA", "null", "None", "nan"))]
    orphan = _room("x", n=20, seed=9).assign(node="")
    path = tmp_path / "na.csv"
    _long(*rooms, orphan).to_csv(path, index=False)
    s = load_series(str(path), "value", series_col="node")
    assert _ids(s) == ["NA", "None", "nan", "null"]
    assert s.report.rows_without_series == 20
    assert "20 rows without a series id (column 'node') left out" in s.report.lines()


def test_a_series_id_with_a_control_character_is_refused(tmp_path):
    path = tmp_path / "ctl.csv"
    _long(_room("a"), _room("b\x1b[2Jc", seed=1)).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"series id 'b\\x1b\[2Jc' \(column 'node'\) contains the control character"):
        load_series(str(path), "value", series_col="node")


def test_a_folder_keeps_subfolders_apart_and_refuses_what_is_no_series(tmp_path):
    (tmp_path / "site2").mkdir()
    _room("a").drop(columns="node").to_csv(tmp_path / "a.csv", index=False)
    _room("a", seed=1).drop(columns="node").to_csv(tmp_path / "site2" / "a.csv", index=False)
    s = load_series(str(tmp_path), "value")
    assert _ids(s) == ["a", "site2/a"] and s.report.duplicate_timestamps == 0
    (tmp_path / "readme.txt").write_text("hello\nthese are our sensors\n")
    with pytest.raises(DataError, match=r"readme\.txt has no column 'value' .*one CSV per series"):
        load_series(str(tmp_path), "value")
    (tmp_path / "readme.txt").unlink()
    _room("a", seed=2).drop(columns="node").to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    with pytest.raises(DataError, match=r"a\.csv and a\.tsv both name series 'a'"):
        load_series(str(tmp_path), "value")


def test_parquet_partitions_1_and_01_are_two_series(tmp_path):
    pytest.importorskip("pyarrow")
    for node, seed in (("1", 0), ("01", 1)):
        d = tmp_path / f"node={node}"
        d.mkdir()
        _room(node, seed=seed).drop(columns="node").to_parquet(d / "part-0.parquet")
    s = load_series(str(tmp_path), "value")
    assert _ids(s) == ["01", "1"]


def test_a_stuck_sensor_among_others_trains_on_the_pooled_spread(tmp_path):
    """One series whose value never moves (a stuck sensor) stopped the whole set with a hint
    (--exclude value) that removes the target. It is scaled by the pooled spread, and said so."""
    stuck = _room("k", seed=3).assign(value=21.5)
    path = tmp_path / "stuck.csv"
    _long(_room("a"), _room("b", seed=1), stuck).to_csv(path, index=False)
    s = load_series(str(path), "value", series_col="node")
    data = prepare(s, horizon=3)
    ins, outs = data.series_scalers["k"]
    assert float(outs.scale[0]) == pytest.approx(float(data.out_scaler.scale[0]))
    assert float(outs.offset[0]) == pytest.approx(21.5)
    k = next(p for p in s.parts if p.id == "k")
    assert np.allclose(data.x[k.start:k.stop, 0], 0.0)
    assert any("series k: value constant over its training split" in line for line in s.report.lines())
    # the others keep their own spread
    assert float(data.series_scalers["a"][1].scale[0]) != pytest.approx(float(data.out_scaler.scale[0]))


def test_series_too_short_to_score_are_named(tmp_path):
    """A 5-row series trained silently and vanished from the per-series results; a 1-row one
    failed with 'sampled every None s'."""
    path = tmp_path / "short.csv"
    _long(_room("a"), _room("b", seed=1), _room("five", n=5, seed=2), _room("one", n=1, seed=3)).to_csv(path, index=False)
    s = load_series(str(path), "value", series_col="node")
    assert _ids(s) == ["a", "b", "five"]
    assert "series one: 1 row, too few to tell its sample period: left out" in s.report.lines()
    prepare(s, horizon=3)
    assert "series five: 5 rows, too few for a test forecast at horizon 3: trained on, not scored" in s.report.lines()


def test_a_markdown_table_renders_hostile_ids_as_text():
    """compare-local's table (OUT.local.md): an id with | or a newline broke the table and injected rows."""
    from train.search import markdown_table
    text = markdown_table([{"series": "x|y", "mae": 1.0}, {"series": "nl\n| evil | 1 |", "mae": 2.0}])
    lines = text.splitlines()
    assert len(lines) == 4
    assert all(line.count("|") - line.count("\\|") == 3 for line in lines)
    assert "x\\|y" in lines[2] and "\\n" in lines[3]


def test_an_unknown_series_asked_for_by_name_is_shown_short():
    """`stream --series` / `export.mcu --series` echoed a 100 KB name into a 100 KB error line."""
    from runtime.streams import not_a_series
    why = not_a_series({"a": {}, "b" * 500: {}}, "x" * 100_000)
    assert why.startswith("'" + "x" * 60 + "'...") and len(why) < 300
    assert not_a_series({"a": {}}, "a") is None


def test_a_folder_of_csvs_with_units_in_their_headers_or_a_title_line(tmp_path):
    """The stray-file check ran before `value [degC]` became `value`: a folder that trained before was
    refused, and a title line above a header got 'move other files out' (now it is skipped, as the
    device's stream skips it)."""
    for name, seed in (("a", 0), ("b", 1)):
        _room(name, seed=seed).drop(columns="node").rename(columns={"value": "value [degC]"}).to_csv(
            tmp_path / f"{name}.csv", index=False)
    s = load_series(str(tmp_path), "value")
    assert _ids(s) == ["a", "b"] and s.units["value"] == "degC"
    text = _room("b", seed=1).drop(columns="node").to_csv(index=False)
    (tmp_path / "b.csv").write_text("logger 7 export,site 3,2024\n" + text)
    s = load_series(str(tmp_path), "value")         # `value [degC]` in a.csv and `value` in b.csv: one column
    assert _ids(s) == ["a", "b"] and s.report.above_header == 1 and s.units["value"] == "degC"
    (tmp_path / "b.csv").write_text(text.replace("value", "value [degF]", 1))
    with pytest.raises(DataError, match=r"column 'value' is in degC in a\.csv and in degF in b\.csv"):
        load_series(str(tmp_path), "value")


def test_a_parquet_dataset_with_two_units_for_a_column_is_refused_as_a_folder_of_csvs_is(tmp_path):
    """collect writes each column's unit into the Parquet fields' metadata; two devices that kept
    different units for one column had the first file's win silently."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    for node, unit in (("a", "degC"), ("b", "degF")):
        d = tmp_path / "ds" / f"node={node}"
        d.mkdir(parents=True)
        t = pa.Table.from_pandas(_room(node, seed=0).drop(columns="node"), preserve_index=False)
        field = t.schema.field("value").with_metadata({b"unit": unit.encode()})
        pq.write_table(t.cast(t.schema.set(t.schema.get_field_index("value"), field)), d / "part-0.parquet")
    with pytest.raises(DataError, match=r"column 'value' is in degC in node=a/part-0\.parquet and in degF in "
                                        r"node=b/part-0\.parquet"):
        load_series(str(tmp_path / "ds"), "value")
    os.remove(tmp_path / "ds" / "node=b" / "part-0.parquet")
    assert load_series(str(tmp_path / "ds"), "value").units["value"] == "degC"


def test_a_column_empty_in_one_series_is_named_as_such():
    """Node b's humidity sensor never reported: the refusal listed both feature sets without saying why."""
    t = pd.date_range("2024-03-01", periods=300, freq="h").strftime("%Y-%m-%d %H:%M")
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"time": t, "node": "a", "T": rng.normal(size=300), "H": rng.normal(size=300)})
    b = pd.DataFrame({"time": t, "node": "b", "T": rng.normal(size=300), "H": np.nan})
    with pytest.raises(DataError, match="H is empty or not numeric in series 'b'.*--exclude"):
        prepare_many(pd.concat([a, b]), "node", "T")
