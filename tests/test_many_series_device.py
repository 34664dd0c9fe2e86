"""Many sensors, one model (issue 27), after training: quantize, the C library and `runtime stream`
each see a series in its own scale, on a small 10x pair trained once for the module."""
import os

import numpy as np
import pandas as pd
import pytest

from test_many_series import _long, _room


@pytest.fixture(scope="module")
def pair_bundle(tmp_path_factory):
    """A small 10x pair (1,500 rows each), each series from its own base, exported (ONNX only)."""
    from conftest import run_module
    d = tmp_path_factory.mktemp("pair")
    csv, ck, bundle = d / "pair.csv", str(d / "m.pt"), str(d / "b")
    _long(_room("small", n=1500), _room("large", n=1500, scale=10.0, seed=1, walk=True)).to_csv(csv, index=False)
    run_module("train", "--data", str(csv), "--target", "value", "--series-col", "node", "--hidden", "8",
               "--epochs", "2", "--horizon", "3", "--calendar", "none", "--series-base", "own", "--out", ck)
    run_module("export", ck, "--out", bundle, "--formats", "onnx")
    return bundle


def test_the_c_library_for_one_series_forecasts_in_its_scale_and_base(pair_bundle, tmp_path):
    """export.mcu --series ID: the library for a sensor of that series streams what the runtime
    streams for it (its input and target scalers and its own base; the deadband constants are its
    own); without --series, the pooled scale and a note; an unknown series is one clear line."""
    import subprocess
    import runtime
    from conftest import ROOT, run_module
    from export.mcu import McuError, c_float, write_library
    from runtime.bundle import read_manifest
    m = read_manifest(pair_bundle)
    with np.load(pair_bundle + ".build.npz") as z:
        raw = z["inputs"][:, :len(m["features"])]
    for sid in ("large", "small"):
        out = tmp_path / sid
        write_library(pair_bundle, str(out), "fp32", series=sid)
        src = (out / "gru_step.c").read_text()
        assert "DEADBAND[GRU_HORIZON] = {" + ", ".join(c_float(v) for v in m["series"][sid]["deadband"]) in src
        exe = out / "gru_stream"
        subprocess.run(["gcc", "-std=c99", "-O2", "-DGRU_DEADBAND_OFF", f"-I{out}",
                        os.path.join(ROOT, "examples", "mcu", "stream.c"), str(out / "gru_step.c"), "-lm", "-o", str(exe)],
                       check=True, capture_output=True, text=True)
        lo, hi = next((a, b) for s, a, b in _parts(pair_bundle) if s == sid)
        x = raw[lo:lo + 300]
        text = "\n".join(",".join(f"{v:.9g}" for v in r) for r in x) + "\n"
        got = np.array([[float(v) for v in line.split(",")]
                        for line in subprocess.run([str(exe)], input=text, capture_output=True, text=True,
                                                   check=True).stdout.splitlines()])
        fc = runtime.load(pair_bundle, engine="numpy", deadband=False, series=[sid])
        want = np.stack([fc.step(r) for r in x])
        scale = m["series"][sid]["targets"]["scale"][0]
        np.testing.assert_allclose(got, want, atol=1e-4 * scale)
    p = run_module("export.mcu", pair_bundle, "--out", str(tmp_path / "pooled"))
    assert "note: this bundle forecasts 2 series, each in its own scale; this library uses the pooled scale" in p.stderr
    with pytest.raises(McuError, match=r"series 'kitchen' is not one of this bundle's series \('large', 'small'\)"):
        write_library(pair_bundle, str(tmp_path / "x"), "fp32", series="kitchen")


def test_stream_forecasts_one_series_in_its_own_scale(pair_bundle, tmp_path):
    """runtime stream --series ID forecasts a sensor's CSV as that series' (the runtime's forecasts for
    it) and captures it under that node; without it, the pooled scale and a note; a wrong ID, one line."""
    import sqlite3
    import runtime
    from conftest import run_module
    m = runtime.read_manifest(pair_bundle)
    names = [f["name"] for f in m["features"]]
    with np.load(pair_bundle + ".build.npz") as z:
        raw = z["inputs"][:, :len(names)]
    lo = next(a for s, a, _ in _parts(pair_bundle) if s == "large")
    x = raw[lo:lo + 50]
    pd.DataFrame(x, columns=names).to_csv(tmp_path / "in.csv", index=False)
    fc = runtime.load(pair_bundle, engine="numpy", series=["large"])
    want = np.stack([fc.step(r) for r in x])
    args = ("runtime", "stream", pair_bundle, "--engine", "numpy", "--input", str(tmp_path / "in.csv"))
    run_module(*args, "--series", "large", "--output", str(tmp_path / "out.csv"), "--capture", str(tmp_path / "c.db"))
    got = pd.read_csv(tmp_path / "out.csv").to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert [r[0] for r in db.execute("SELECT name FROM nodes")] == ["large"]
    p = run_module(*args, "--output", str(tmp_path / "pooled.csv"))
    assert "note: this bundle forecasts 2 series, each in its own scale" in p.stderr
    assert not np.allclose(pd.read_csv(tmp_path / "pooled.csv").to_numpy(), want, rtol=1e-2)
    p = run_module(*args, "--series", "kitchen", "--output", str(tmp_path / "x.csv"), check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: --series 'kitchen' is not one of this bundle's series ('large', 'small')"]


def _parts(bundle: str) -> list:
    import json
    with np.load(bundle + ".build.npz") as z:
        return json.loads(str(z["meta"]))["parts"]


def test_quantize_calibrates_and_measures_each_series_in_its_own_scale(pair_bundle, tmp_path):
    """quantize sees what the device feeds the graph: each series normalized by its own scaler (the
    build file names each series' rows), and its drift report's task MAE is each series' forecast
    through its own scale, base and deadband, the device's (before: every row in the pooled scale,
    the first series' test stretch only)."""
    import json
    import runtime
    from conftest import run_module
    from export.buildfile import reach_back, read_build_file
    from quantize.drift import WARMUP
    from runtime.bundle import read_manifest
    from runtime.scaler import Scaler
    bundle = pair_bundle
    m = read_manifest(bundle)
    data = read_build_file(bundle, m)
    assert [sid for sid, _, _ in data.parts] == ["large", "small"]
    with np.load(bundle + ".build.npz") as z:
        raw = z["inputs"]
    for sid, lo, hi in data.parts:
        own = Scaler.from_dict(m["series"][sid]["inputs"]).normalize(raw[lo:hi])
        np.testing.assert_allclose(data.x[lo:hi], own, rtol=1e-6, equal_nan=True)
    assert [sid for sid, _, _ in data.streams("test")] == ["large", "small"]
    run_module("quantize", bundle, "--formats", "onnx", "--allow-drift", "--samples", "500")
    task = read_manifest(bundle)["drift"]["artifacts"]["step.int8.onnx"]["task"]
    assert set(task["per_series"]) == {"large", "small"}
    for sid, a, b in data.streams("test"):      # the device streams from WARMUP readings before: scored from a
        w = reach_back(data.segments, a, a, WARMUP)
        fc = runtime.load(bundle, engine="onnxruntime", series=[sid], precision="fp32")
        y = np.stack([fc.step(r) for r in raw[w:b, :len(m["features"])]])[a - w:]
        with np.load(bundle + ".build.npz") as z:
            truth = z["targets"][a:b]
        ok = np.isfinite(truth).all(axis=1)
        device_mae = float(np.mean(np.abs(y[ok] - truth[ok])))
        assert task["per_series"][sid]["float_mae"] == pytest.approx(device_mae, rel=1e-3), sid
    assert json.dumps(task["per_series"])            # JSON-ready
    # The user's calibration CSV: each row's series named, else refused in one line.
    names = [f["name"] for f in m["features"]]
    cal = pd.DataFrame(raw[:, :len(names)], columns=names)
    cal.to_csv(tmp_path / "nocol.csv", index=False)
    p = run_module("quantize", bundle, "--formats", "onnx", "--calibration", str(tmp_path / "nocol.csv"), check=False)
    assert p.returncode == 2 and "no 'series' column; this bundle forecasts 2 series" in p.stderr
    cal["series"] = ["large" if i < data.parts[0][2] else "small" for i in range(len(cal))]
    cal.to_csv(tmp_path / "cal.csv", index=False)
    p = run_module("quantize", bundle, "--formats", "onnx", "--calibration", str(tmp_path / "cal.csv"), check=False)
    assert p.returncode == 0, p.stderr[-1000:]


def test_a_long_format_file_streams_one_series_and_serves_every_node(pair_bundle, tmp_path):
    """The long-format table the model was trained on, as it is: `stream --series large` forecasts
    that series' rows (the others counted in `other_series`), as from its rows alone; without
    --series, one line naming the way; serve --stdin maps each row to its series by the column
    training named (`sensor` here, not only `node`). Before, stream stepped every series' rows as
    one stream (all but the first of a time skipped as the same period) without a word, and serve
    put every row of a `sensor` table in the pooled scale."""
    import json
    import runtime
    from conftest import copy_bundle, reseal, run_module
    from test_serve import REL, values
    from test_serve_edges import serve_stdin
    table = pd.read_csv(os.path.join(os.path.dirname(pair_bundle), "pair.csv")).head(400)
    broken = table.astype(object)
    other = broken.index[broken.node == "small"][5]
    broken.loc[other, broken.columns[0]] = "not a time"       # another series' bad row: not this stream's concern
    broken.to_csv(tmp_path / "long.csv", index=False)
    table[table.node == "large"].drop(columns="node").to_csv(tmp_path / "large.csv", index=False)
    args = ("runtime", "stream", pair_bundle, "--engine", "numpy")
    p = run_module(*args, "--input", str(tmp_path / "long.csv"), "--series", "large", "--output", str(tmp_path / "a.csv"),
                   "--time-col", "time")
    stats = json.loads(p.stderr.strip().splitlines()[-1])
    run_module(*args, "--input", str(tmp_path / "large.csv"), "--series", "large", "--output", str(tmp_path / "b.csv"))
    got = pd.read_csv(tmp_path / "a.csv").drop(columns="node")
    np.testing.assert_array_equal(got.to_numpy(), pd.read_csv(tmp_path / "b.csv").to_numpy())
    assert stats["readings"] == 200 and stats["other_series"] == 200 and stats["same_period"] == 0
    assert stats["skipped_lines"] == 0 and "untimed" not in stats and "warning" not in p.stderr, p.stderr[-800:]
    table.to_parquet(tmp_path / "long.parquet")                  # a Parquet file: one line naming the way
    p = run_module(*args, "--input", str(tmp_path / "long.parquet"), "--series", "large", check=False)
    assert p.returncode == 2 and "is a Parquet file; stream reads CSV text" in p.stderr and "UTF-8" not in p.stderr
    p = run_module(*args, "--input", str(tmp_path / "long.csv"), "--output", str(tmp_path / "c.csv"), check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'long.csv'}: its column 'node' names the series of each row (a long-format table): "
        "stream one with --series ID (this bundle knows 'large', 'small'), or all with serve --stdin"]
    m = runtime.read_manifest(pair_bundle)
    m["source"]["data_spec"]["series_col"] = "sensor"
    renamed = copy_bundle(pair_bundle, tmp_path / "renamed")
    reseal(renamed, m)
    text = table.rename(columns={"node": "sensor"}).to_csv(index=False).encode()
    rc, msgs, err = serve_stdin(renamed, text)
    assert rc == 0 and sorted({x["node"] for x in msgs}) == ["large", "small"] and "pooled" not in err, err[-800:]
    large = [x for x in msgs if x["node"] == "large"]
    np.testing.assert_allclose(values(large), pd.read_csv(tmp_path / "b.csv").iloc[:, 1:].to_numpy(float), rtol=REL, atol=1e-4)


def test_a_file_delimited_by_comma_and_space_trains_streams_and_serves_as_written(tmp_path):
    """`timestamp, sensor_id, value` (a comma and a space, as many exports write): training read the
    names and ids with their leading space (` value`, series ` a`), so the flags as the user reads the
    header did not find them, and with the spaces given, `stream` (whose header is read without
    them) missed the feature and `serve` forecast nothing (9,001 lines malformed). Now both sides
    drop a cell's leading spaces after the delimiter, as pandas' skipinitialspace does."""
    import json
    from conftest import run_module
    from test_serve_edges import serve_stdin
    table = _long(_room("a", n=400), _room("b", n=400, scale=10.0, seed=1)).drop(columns="rh")
    lines = ["timestamp, sensor_id, value"] + [f"{t:%Y-%m-%d %H:%M:%S}, {n}, {v:.3f}" for t, n, v in table.to_numpy()]
    src = tmp_path / "spaced.csv"
    src.write_text("\n".join(lines) + "\n")
    ck, bundle = str(tmp_path / "m.pt"), str(tmp_path / "b")
    run_module("train", "--data", str(src), "--target", "value", "--series-col", "sensor_id", "--epochs", "1",
               "--hidden", "4", "--horizon", "2", "--calendar", "none", "--quiet", "--out", ck)
    run_module("export", ck, "--out", bundle, "--formats", "onnx")
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    assert sorted(m["series"]) == ["a", "b"] and [f["name"] for f in m["features"]] == ["value"]
    p = run_module("runtime", "stream", bundle, "--engine", "numpy", "--input", str(src), "--series", "b",
                   "--output", str(tmp_path / "b.csv"))
    stats = json.loads(p.stderr.strip().splitlines()[-1])
    assert stats["readings"] == 400 and stats["other_series"] == 400 and stats["imputed"] == 0
    rc, msgs, err = serve_stdin(bundle, src.read_bytes())
    assert rc == 0 and len(msgs) == 800 and sorted({x["node"] for x in msgs}) == ["a", "b"], err[-800:]
    assert "pooled" not in err


def test_series_with_their_own_units_in_one_column_are_read_and_published_in_them(tmp_path):
    """A Grafana export of series as rows (`Series,Time,Value` with `19.8 °C`, `49.8 %`, `1512.3 W`):
    training read each series' cells, but the bundle kept the last series' unit (W) for the column,
    so the device read every °C and % cell as missing and forecast a flat line for those series,
    published with the unit W, and serve said nothing. Now each series keeps its unit in the bundle
    (`series.<id>.units`), the device reads a cell in any unit the bundle knows for its column, and
    serve publishes each node's forecast in its series' unit."""
    import json
    from conftest import run_module
    from test_serve_edges import last_stats, serve_stdin
    t = pd.date_range("2024-01-01", periods=600, freq="h")
    k, rng = np.arange(600), np.random.default_rng(0)
    kinds = {"living temp": (20, 2, "°C"), "living hum": (50, 5, "%"), "power": (1500, 300, "W")}
    rows = ["Series,Time,Value"]
    for i in range(600):
        for name, (mean, amp, unit) in kinds.items():
            v = mean + amp * np.sin(2 * np.pi * k[i] / 24) + 0.05 * amp * rng.standard_normal()
            rows.append(f'"{name}","{t[i]:%Y-%m-%d %H:%M:%S}","{v:.1f} {unit}"')
    src = tmp_path / "grafana.csv"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    ck, bundle = str(tmp_path / "m.pt"), str(tmp_path / "b")
    p = run_module("train", "--data", str(src), "--target", "Value", "--series-col", "Series", "--epochs", "1",
                   "--hidden", "4", "--horizon", "2", "--calendar", "none", "--quiet", "--out", ck)
    assert "column Value: units differ between series" in p.stdout, p.stdout
    run_module("export", ck, "--out", bundle, "--formats", "onnx")
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    assert m["features"][0]["unit"] == "" and m["targets"][0]["unit"] == ""
    assert {sid: s["units"] for sid, s in m["series"].items()} == {n: {"Value": u} for n, (_, _, u) in kinds.items()}
    p = run_module("runtime", "stream", bundle, "--engine", "numpy", "--input", str(src), "--series", "living hum",
                   "--output", str(tmp_path / "hum.csv"))
    stats = json.loads(p.stderr.strip().splitlines()[-1])
    assert stats["readings"] == 600 and stats["imputed"] == 0, p.stderr[-800:]
    assert 40 < pd.read_csv(tmp_path / "hum.csv").iloc[:, -1].median() < 60
    rc, msgs, err = serve_stdin(bundle, src.read_bytes())
    assert rc == 0 and len(msgs) == 1800, err[-800:]
    assert {x["node"]: x["unit"] for x in msgs} == {n: u for n, (_, _, u) in kinds.items()}
    assert last_stats(err)["imputed_cells"] == 0


def test_an_influxdb_annotated_csv_trains_and_streams_without_flags(tmp_path):
    """InfluxDB's annotated CSV: three `#group/#datatype/#default` lines above the header, an empty
    first column, the time in `_time` beside the query's constant `_start` and `_stop`. Training
    read the `#group` line as the header ("column names 'false', 'true' appear more than once"),
    and with --skip-rows 3 took `_start` as the time (the first column of dates): every series one
    row, then "too few rows". Now the annotation lines are skipped and `_time` is the time."""
    import json
    from conftest import run_module
    t = pd.date_range("2024-01-01", periods=600, freq="5min")
    lines = ["#group,false,false,true,true,false,false,true,true,true",
             "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,string,string",
             "#default,_result,,,,,,,,",
             ",result,table,_start,_stop,_time,_value,_field,_measurement,host"]
    for table, (host, scale) in enumerate((("srv1", 1.0), ("srv2", 10.0))):
        lines += [f",,{table},2024-01-01T00:00:00Z,2024-02-01T00:00:00Z,{x:%Y-%m-%dT%H:%M:%SZ},"
                  f"{scale * (20 + np.sin(i / 12)):.3f},temp,cpu,{host}" for i, x in enumerate(t)]
    src = tmp_path / "influx.csv"
    src.write_text("\r\n".join(lines) + "\r\n")
    ck, bundle = str(tmp_path / "m.pt"), str(tmp_path / "b")
    p = run_module("train", "--data", str(src), "--target", "_value", "--series-col", "host", "--epochs", "1",
                   "--hidden", "4", "--horizon", "2", "--quiet", "--out", ck)
    assert "series srv1: 600 rows" in p.stdout and "every 5min" in p.stdout, p.stdout[:1500]
    run_module("export", ck, "--out", bundle, "--formats", "onnx")
    p = run_module("runtime", "stream", bundle, "--engine", "numpy", "--input", str(src), "--series", "srv2",
                   "--output", str(tmp_path / "srv2.csv"))
    stats = json.loads(p.stderr.strip().splitlines()[-1])
    assert stats["readings"] == 600 and stats["imputed"] == stats["missing_periods"] == 0, p.stderr[-800:]


def test_a_node_that_falls_silent_holds_up_no_replay(pair_bundle, tmp_path):
    """A recorded long-format file in which one sensor stops after 20 readings, replayed through
    serve at full speed: the open period waited for the silent node, the others' readings ran over
    max_gap_ticks ahead, and the clock jumped, zeroing every stream (a helper's probe: 21 forecasts
    of another node off `stream`'s, by up to 0.12). A node silent for active_ticks periods behind
    the newest readings no longer holds a period open; the others forecast exactly as `stream`."""
    from conftest import run_module
    from test_serve import REL, values
    from test_serve_edges import last_stats, serve_stdin
    table = pd.read_csv(os.path.join(os.path.dirname(pair_bundle), "pair.csv")).head(1000)
    small = table.index[table.node == "small"]
    table = table.drop(index=small[20:])
    table.to_csv(tmp_path / "long.csv", index=False)
    run_module("runtime", "stream", pair_bundle, "--engine", "numpy", "--input", str(tmp_path / "long.csv"),
               "--series", "large", "--output", str(tmp_path / "large.csv"))
    rc, msgs, err = serve_stdin(pair_bundle, (tmp_path / "long.csv").read_bytes())
    assert rc == 0 and "jumped" not in err, err[-800:]
    large = [x for x in msgs if x["node"] == "large"]
    assert len(large) == 500 and len([x for x in msgs if x["node"] == "small"]) == 20
    want = pd.read_csv(tmp_path / "large.csv").iloc[:, 2:].to_numpy(float)
    np.testing.assert_allclose(values(large), want, rtol=REL, atol=1e-4)
    assert last_stats(err)["late"] == 0
