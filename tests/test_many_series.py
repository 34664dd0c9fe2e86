"""Many sensors, one model (issue 27): many series in, per-series scales, per-series evaluation."""
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from train.data import DataError, load_series
from train.prepare import prepare


def _room(name: str, n: int = 600, scale: float = 1.0, seed: int = 0, gap_at: int | None = None,
          walk: bool = False) -> pd.DataFrame:
    """An hourly series with a daily cycle (or a random walk) at `scale`, a humidity-like second
    column, an optional long gap."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2024-01-01", periods=n, freq="h")
    k = np.arange(n)
    noise = 0.3 * rng.standard_normal(n)
    value = scale * (10 + (np.cumsum(noise) if walk else 3 * np.sin(2 * np.pi * k / 24) + noise))
    rh = 50 + 5 * np.cos(2 * np.pi * k / 24) + rng.standard_normal(n)
    df = pd.DataFrame({"time": t, "node": name, "value": value, "rh": rh})
    return df.drop(index=range(gap_at, gap_at + 10)) if gap_at else df


def _long(*rooms) -> pd.DataFrame:
    return pd.concat(rooms, ignore_index=True).sort_values("time", kind="stable").reset_index(drop=True)


def test_files_that_write_dates_in_different_orders_are_refused_in_one_line(tmp_path):
    """A folder of one day-first export (31/01/2024) and one month-first (01/31/2024): training read
    each file right, but the bundle kept the first file's order, and the device read the other's
    times wrong (stream: 84,960 periods missing, 10 clock jumps). The device reads one order."""
    d = tmp_path / "sites"
    d.mkdir()
    for name, fmt in (("eu", "%d/%m/%Y %H:%M"), ("us", "%m/%d/%Y %H:%M")):
        r = _room(name, n=600).drop(columns="node")
        r.assign(time=r.time.dt.strftime(fmt)).to_csv(d / f"{name}.csv", index=False)
    with pytest.raises(DataError, match=r"dates in different orders: series 'eu' day first, series 'us' month first"):
        load_series(str(d), "value")


def test_an_id_serve_cannot_take_is_named_in_the_report(tmp_path):
    """Training took `pump#1` and a 300-character id, which serve refuses as node ids (MQTT's
    wildcards; 128 characters at most): those sensors never got a forecast and training said
    nothing. Now the report names them (stream --series still forecasts them)."""
    path = tmp_path / "long.csv"
    _long(_room("pump#1"), _room("x" * 300, seed=1), _room("ok", seed=2)).to_csv(path, index=False)
    s = load_series(str(path), "value", series_col="node")
    lines = [x for x in s.report.lines() if "serve" in x]
    assert len(lines) == 2 and lines[0].startswith("series 'pump#1': serve takes no such node id"), lines
    assert "'xxxxxxxx" in lines[1]


def test_a_column_of_one_value_a_row_is_no_series_column(tmp_path):
    """`--series-col T2` on a wide table (a measurement, not an id) made 600 one-row series and ended
    in "too few rows"; now one line says the column names no series."""
    path = tmp_path / "wide.csv"
    _room("a").to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'rh' has 600 different values in 600 rows: it names no series"):
        load_series(str(path), "value", series_col="rh")


def test_the_calendar_rule_counts_the_span_of_a_series_not_of_all_rows():
    """auto adds the day of week where the training data covers three weeks; three series of 25
    days each (17.5 days of training rows) added it as if they were 52 days of one series: every
    weekday seen about twice, its inputs fitted to noise."""
    from train.calendar import add_calendar
    df = _long(_room("a"), _room("b", seed=1), _room("c", seed=2)).assign(time=lambda d: d.time.astype(str))
    from train.many import prepare_many
    s = prepare_many(df, "node", "value")
    names = [i["name"] for i in add_calendar(s, "auto").derived["inputs"]]
    assert names and not [n for n in names if n.startswith("day_of_week")], names


def test_a_series_whose_target_is_text_is_left_out_and_named(tmp_path):
    """A Home Assistant history holds a door contact (`on`/`off`) beside the temperature and power
    sensors: it stopped training of every series ("column 'state' is not numeric"), and no flag
    drops one series. Now that series is left out and named; where every series is text, the
    error stays."""
    df = _long(_room("sensor.temp"), _room("sensor.power", seed=1, scale=100.0))
    door = _room("binary_sensor.door", n=300).assign(value=lambda d: np.where(d.value > 10, "on", "off"))
    path = tmp_path / "history.csv"
    pd.concat([df, door]).to_csv(path, index=False)
    s = load_series(str(path), "value", series_col="node")
    assert [p.id for p in s.parts] == ["sensor.power", "sensor.temp"]
    assert "series binary_sensor.door: its target reads no numbers (values such as 'on', 'off'): left out" in s.report.lines()
    door.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"series 'binary_sensor.door' \(column 'node'\): column 'value' is not numeric"):
        load_series(str(path), "value", series_col="node")


def test_series_named_by_two_columns_are_told_to_join_them(tmp_path):
    """InfluxDB's `host` and `_field` together name a series: --series-col host said "pass
    --series-col _field", and --series-col _field said "pass --series-col host"."""
    path = tmp_path / "two.csv"
    parts = [_room(h, seed=i).assign(field=f) for i, (h, f) in enumerate([("a", "t"), ("a", "rh"), ("b", "t"), ("b", "rh")])]
    _long(*parts).to_csv(path, index=False)
    for col, other in (("node", "field"), ("field", "node")):
        with pytest.raises(DataError, match=rf"told apart by column '{other}': a series is named by both columns; "
                                            rf"join them into one \(such as {col}/{other}\)"):
            load_series(str(path), "value", series_col=col)


def test_a_long_format_table_without_series_col_is_detected_and_named(tmp_path):
    path = tmp_path / "long.csv"
    _long(_room("a"), _room("b", seed=1), _room("c", seed=2)).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"long-format table of 3 series; pass --series-col node"):
        load_series(str(path), "value")


def test_repeated_rows_told_apart_only_by_a_text_tag_are_no_long_format(tmp_path):
    """Like the traffic set: an hour with two weather descriptions is one reading given twice."""
    df = _room("a").drop(columns="node")
    df["weather"] = "Clear"
    extra = df.iloc[::4].assign(weather="Mist")
    path = tmp_path / "tagged.csv"
    pd.concat([df, extra]).sort_values("time", kind="stable").to_csv(path, index=False)
    s = load_series(str(path), "value")
    assert s.report.duplicate_timestamps == 150 and not s.parts


def test_long_format_each_series_gets_its_own_grid_gaps_and_split(tmp_path):
    path = tmp_path / "long.csv"
    _long(_room("a", gap_at=200), _room("b", n=480, seed=1)).to_csv(path, index=False)
    s = load_series(str(path), "value", series_col="node")
    assert [(p.id, p.stop - p.start) for p in s.parts] == [("a", 590), ("b", 480)]
    assert s.features == ["value", "rh"]
    assert s.report.per_series["a"]["long_gaps"] == 1 and s.report.per_series["b"]["long_gaps"] == 0
    assert s.report.per_series["a"]["segments"] == 2 and s.report.segments == 3
    assert s.report.duplicate_timestamps == 0
    assert any(line.startswith("series a: 590 rows, 1 long gap(s)") for line in s.report.lines())
    data = prepare(s, horizon=3)
    for name, ranges in data.splits.items():           # each series has its own train/val/test stretch
        for p in s.parts:
            mine = [r for r in ranges if p.start <= r[0] < p.stop]
            assert mine and all(b <= p.stop for _, b in mine), (name, p.id)
    b = s.parts[1]
    first_test_b = min(a for a, _ in data.splits["test"] if a >= b.start)
    assert first_test_b - b.start == pytest.approx(0.85 * 480, abs=2)


def test_a_folder_of_csvs_one_series_per_file(tmp_path):
    for name, seed in (("kitchen", 0), ("hall.1", 1)):
        _room(name, seed=seed).drop(columns="node").to_csv(tmp_path / f"{name}.csv", index=False)
    s = load_series(str(tmp_path), "value")
    assert [p.id for p in s.parts] == ["hall.1", "kitchen"]
    assert len(s.target) == 1200 and s.report.rows == 1200


def test_a_parquet_dataset_partitioned_by_device_and_node(tmp_path):
    pytest.importorskip("pyarrow")
    for dev, node, seed in (("gw1", "a", 0), ("gw1", "b", 1), ("gw2", "a", 2)):
        d = tmp_path / f"device={dev}" / f"node={node}"
        d.mkdir(parents=True)
        _room(node, seed=seed).drop(columns="node").to_parquet(d / "part-0.parquet")
    s = load_series(str(tmp_path), "value")
    assert [p.id for p in s.parts] == ["gw1/a", "gw1/b", "gw2/a"]
    assert s.features == ["value", "rh"]           # the partition keys are ids, not inputs


def test_per_series_scalers_and_evaluation_of_a_10x_pair(tmp_path):
    from train.evaluate import evaluate, series_table, series_verdict
    from train.fit import TrainConfig
    from train.pipeline import ModelSpec, train_once
    path = tmp_path / "pair.csv"
    _long(_room("small", n=900), _room("large", n=900, scale=10.0, seed=1)).to_csv(path, index=False)
    data = prepare(load_series(str(path), "value", series_col="node"), horizon=3)
    assert set(data.series_scalers) == {"small", "large"}
    for p in data.series.parts:                      # every series normalized by its own training split
        tr = np.concatenate([np.arange(a, b) for a, b in data.splits["train"] if p.start <= a < p.stop])
        assert abs(float(np.mean(data.y[tr, 0]))) < 0.1 and 0.8 < float(np.std(data.y[tr, 0])) < 1.2
    run = train_once(data, ModelSpec(hidden_size=16, eval_window=32),
                     TrainConfig(epochs=3, chunk=128, seed=0), progress=False)
    ev = run.evaluation
    assert set(ev["per_series"]) == {"small", "large"}
    for sid, models in ev["per_series"].items():
        assert set(models["GRU streamed"]) >= {"mae", "per_step"} and len(models["GRU streamed"]["per_step"]["mae"]) == 3
        assert "persistence" in models and any(k.startswith("linear AR") for k in models)
    small, large = (ev["per_series"][k]["GRU streamed"]["mae"] for k in ("small", "large"))
    assert 3 < large / small < 30                    # each forecast in its own scale
    assert ev["origins"] == sum(m["GRU streamed"]["n"] for m in ev["per_series"].values())
    assert "small" in series_table(ev) and series_verdict(ev)[-1].startswith("per series:")
    tied = {"GRU streamed": {"per_step": {"mae": [0.0, 0.5]}}, "persistence": {"per_step": {"mae": [0.0, 0.4]}}}
    assert series_verdict({"per_series": {"const": tied}})[:2] == [       # a constant series' 0 against 0: a tie
        "series const: loses to its best baseline at step(s) 2 (MAE)", "series const: ties its best baseline at step(s) 1 (MAE)"]
    run.model.cfg = replace(run.model.cfg, deadband=run.model.cfg.deadband_of("large"))   # that series' own
    again = evaluate(run.model, data.part(data.series.parts[0]), "test", window=32)
    assert again["models"]["GRU streamed"]["mae"] == pytest.approx(ev["per_series"]["large"]["GRU streamed"]["mae"])


def test_each_series_identity_is_an_input_and_an_unknown_node_gets_the_average(tmp_path):
    from runtime.derived import DerivedInputs, check_section, identity
    from train.calendar import add_identity
    from train.pipeline import DataSpec, load_prepared
    path = tmp_path / "three.csv"
    _long(_room("a"), _room("b", seed=1, gap_at=300), _room("c", seed=2)).to_csv(path, index=False)
    spec = DataSpec(str(path), "value", series_col="node", calendar="day", series_input="on")
    data = load_prepared(spec)
    names, ids = data.series.input_names, [p.id for p in data.series.parts]
    assert names[-5:] == ["time_of_day_sin", "time_of_day_cos", "series_0", "series_1", "series_2"]
    for p in data.series.parts:                 # 1 for its own series, 0 for the others; pooled scale
        raw = data.series.inputs[p.start:p.stop, -3:]
        np.testing.assert_array_equal(raw[np.isfinite(raw).all(axis=1)][:5], [identity(ids, p.id)] * 5)
        np.testing.assert_array_equal(data.series_scalers[p.id][0].offset[-3:], data.in_scaler.offset[-3:])
        x = data.x[p.start:p.stop, -3:]                  # the model sees them as they are: 1 and 0
        np.testing.assert_array_equal(x[np.isfinite(x).all(axis=1)][:5], [identity(ids, p.id)] * 5)
    assert data.in_scaler.offset[-3:].tolist() == [0.0] * 3 and data.in_scaler.scale[-3:].tolist() == [1.0] * 3
    assert identity(ids, "d") == identity(ids, None) == [1 / 3] * 3 and identity([], "a") == []
    d = DerivedInputs(data.series.derived)
    assert d.needs_time and d.ids == ids and d.values(0.0, "b")[-3:].tolist() == [0.0, 1.0, 0.0]
    for how, n in (("off", 2), ("on", 5)):           # (off: the default)
        assert len(load_prepared(replace(spec, series_input=how)).series.input_names) == len(names) - 5 + n
    assert "series_0" not in load_prepared(replace(spec, only_series="a")).series.input_names
    assert DataSpec("x").series_input == "off"
    with pytest.raises(DataError, match=r"--series-input 'maybe' is not one of off, on"):
        add_identity(data.series, "maybe")
    section = {"utc_offset_s": 0.0, "inputs": [{"name": "s0", "kind": "series", "id": "a"},
                                               {"name": "s1", "kind": "series", "id": "a"}]}
    with pytest.raises(ValueError, match=r"inputs\[1\]\.id' is 'a'; expected a series id, once"):
        check_section(section)
    section["inputs"][1] = {"name": "t", "kind": "cycle", "fn": "sin", "period_s": 60.0}
    with pytest.raises(ValueError, match=r"inputs\[1\]' is a cycle after a series input"):
        check_section(section)


def test_series_that_cannot_be_joined_are_named(tmp_path):
    a, b = _room("a"), _room("b", seed=1)
    b["time"] = pd.date_range("2024-01-01", periods=len(b), freq="30min")
    path = tmp_path / "mixed.csv"
    _long(a, b).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"series 'b' is sampled every 1800.0 s, series 'a' every 3600.0 s"):
        load_series(str(path), "value", series_col="node")
    with pytest.raises(DataError, match=r"series column 'room' not found"):
        load_series(str(path), "value", series_col="room")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"folder with no \.csv or \.parquet files"):
        load_series(str(empty), "value")


def _series_bundle(src, dst, factor: float = 10.0) -> tuple:
    """A copy of `src` with a `series` section: 'base' = the pooled scaler, 'big' = it scaled by `factor`
    (a sensor whose readings are `factor` times larger, normalized to the same model inputs)."""
    import json
    from conftest import copy_bundle, reseal
    bundle = copy_bundle(src, dst)
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    sc = m["scaler"]
    big = {part: {"offset": [v * factor for v in sc[part]["offset"]], "scale": [v * factor for v in sc[part]["scale"]]}
           for part in ("inputs", "targets")}
    m["series"] = {"base": {part: {k: sc[part][k] for k in ("offset", "scale")} for part in ("inputs", "targets")},
                   "big": big}
    m["model"].pop("base", None)          # a level model: what format 6 describes (format 7 adds the AR base)
    m["format_version"] = 6
    reseal(bundle, m)
    return bundle, m


def _readings(fc, n=120, seed=0):
    from runtime.forecaster import training_statistics
    mean, std = training_statistics(fc.manifest)
    rng = np.random.default_rng(seed)
    return (mean + std * rng.standard_normal((n, len(mean)))).astype(np.float32)


@pytest.mark.parametrize("engine", ["numpy", "litert"])
def test_a_stream_set_to_its_series_forecasts_in_that_series_scale(daphnet_bundle, tmp_path, engine):
    import runtime
    from runtime.bundle import TIERS
    bundle, _ = _series_bundle(daphnet_bundle, tmp_path / "b")
    if engine == "litert":
        pytest.importorskip("ai_edge_litert")
    pooled = runtime.load(bundle, engine=engine)
    big = runtime.load(bundle, engine=engine, series=["big"])
    batch = runtime.load(bundle, engine=engine, streams=4, series=["big", None, "base", "nowhere"])
    assert batch.series == ["big", None, "base", None]
    x = _readings(pooled)
    for r in x:
        want = pooled.step(r)
        got = big.step(10 * r)
        rows = batch.step(np.stack([10 * r, r, r, r]))
        tol = TIERS["fp32"] * (1 + np.abs(want).max())
        np.testing.assert_allclose(got, 10 * want, rtol=1e-4, atol=10 * tol)
        np.testing.assert_allclose(rows[0], 10 * want, rtol=1e-4, atol=10 * tol)
        for row in rows[1:]:
            np.testing.assert_allclose(row, want, rtol=1e-4, atol=tol)
    assert pooled.stats["out_of_range"] == big.stats["out_of_range"]


def test_an_unknown_series_keeps_the_pooled_scaler_and_says_so(daphnet_bundle, tmp_path):
    import runtime
    bundle, _ = _series_bundle(daphnet_bundle, tmp_path / "b")
    fc = runtime.load(bundle, engine="numpy", streams=2)
    assert fc.set_series(0, "big") is True and fc.set_series(1, "room-41") is False
    assert fc.series == ["big", None]
    assert fc.set_series(0, None) is False and fc.series == [None, None]
    with pytest.raises(ValueError, match=r"stream 2 is not one of 0\.\.1"):
        fc.set_series(2, "big")
    with pytest.raises(ValueError, match=r"series lists 1 series for 2 stream\(s\)"):
        runtime.load(bundle, engine="numpy", streams=2, series=["big"])


def test_bundle_formats_old_and_new(daphnet_bundle, calendar_bundle, tmp_path):
    import json
    import runtime
    from runtime.bundle import BundleError, format_version_for, read_manifest
    for old in (daphnet_bundle, calendar_bundle):        # format 4/5 bundles still load
        m = read_manifest(old)
        assert m["format_version"] in (4, 5, 7) and format_version_for(m) == m["format_version"]
        runtime.load(old, engine="numpy").step(_readings(runtime.load(old, engine="numpy"))[0], time=0.0)
    bundle, m = _series_bundle(daphnet_bundle, tmp_path / "b")
    assert format_version_for(m) == 6 and read_manifest(bundle)["series"]["big"]
    from conftest import reseal
    m["format_version"] = 5
    reseal(bundle, m)
    with pytest.raises(BundleError, match=r"carries per-series scalers \('series'\) is format 6"):
        read_manifest(bundle)
    m["format_version"] = 6
    m["series"]["big"]["inputs"]["scale"][0] = 0.0
    reseal(bundle, m)
    with pytest.raises(BundleError, match=r"series\.big\.inputs\.scale\[0\]' is 0.0; expected > 0"):
        read_manifest(bundle)
    json.dumps(m)


def test_train_export_and_stream_each_series_in_its_own_scale(tmp_path):
    """The CLI end to end on a 10x pair, a daily cycle and a random walk: per-series metrics, each
    series' own base (format 10), and the device streaming each series' test stretch with its own
    scaler and base gives the train-side streamed forecasts."""
    import json
    import runtime
    from conftest import run_module
    from runtime.bundle import TIERS, read_manifest
    from runtime.scaler import Scaler
    from train.checkpoint import load_checkpoint
    from train.evaluate import forecast_raw, predict_streamed
    from train.pipeline import DataSpec, load_prepared
    csv = tmp_path / "pair.csv"
    _long(_room("small", n=2000), _room("large", n=2000, scale=10.0, seed=1, walk=True)).to_csv(csv, index=False)
    ck, bundle = str(tmp_path / "m.pt"), str(tmp_path / "b")
    p = run_module("train", "--data", str(csv), "--target", "value", "--series-col", "node", "--hidden", "8",
                   "--epochs", "2", "--horizon", "3", "--calendar", "none", "--series-input", "on",
                   "--series-base", "own", "--out", ck)
    assert "series small: 2000 rows" in p.stdout and "per series: beats the best baseline" in p.stdout
    assert "2 series forecast from their own base" in p.stdout
    metrics = json.load(open(str(tmp_path / "m.metrics.json")))["metrics"]
    per = metrics["test_per_series"]
    assert set(metrics["series_base"]) == {"small", "large"}          # neither forecast best by the pooled AR
    assert set(metrics["series_best_epoch"]) == {"small", "large"} and "validation per series: the model kept" in p.stdout
    assert set(per) == {"small", "large"} and len(per["large"]["GRU streamed"]["per_step"]["mae"]) == 3
    run_module("export", ck, "--out", bundle)
    m = read_manifest(bundle)
    assert set(m["series"]) == {"small", "large"} and m["format_version"] == 10   # each series' own base
    assert [(d["kind"], d["id"]) for d in m["derived_inputs"]["inputs"]] == [("series", "large"), ("series", "small")]
    import copy
    import jsonschema
    from runtime.bundle import BundleError, check_manifest
    jsonschema.validate(m, json.load(open(os.path.join(os.path.dirname(runtime.__file__), "manifest.schema.json"))))
    from export.mcu import header
    assert '1 if this sensor is series "small", else 0 (a sensor of none of the 2 series: 1/2 on each)' in header(m)
    def without_bases(b, version):
        for s in b["series"].values():
            s.pop("base")
        b["format_version"] = version
    for change, why in ((lambda b: b.update(format_version=9), r"AR base per series \('series\.<id>\.base'\) is format 10"),
                        (lambda b: without_bases(b, 8), r"series' identity as inputs .* is format 9"),
                        (lambda b: b["series"].pop("small"), r"series inputs for 'small', which 'series' does not list")):
        bad = copy.deepcopy(m)
        change(bad)
        with pytest.raises(BundleError, match=why):
            check_manifest(bad)
    model, _ = load_checkpoint(ck)
    assert {sid: m["series"][sid]["deadband"] for sid in ("small", "large")} == {
        sid: pytest.approx(list(tau)) for sid, tau in model.cfg.series_deadband}
    assert "series_deadband" not in m["model"] and "series_base" not in m["model"]
    data = load_prepared(DataSpec(str(csv), "value", horizon=3, calendar="none", series_col="node", series_input="on"))
    for part in data.series.parts:
        sub = data.part(part)
        a, b = sub.splits["test"][0]
        want = forecast_raw(model, sub, predict_streamed(model, sub, "test")[a:b], np.arange(a, b), part.id)
        fc = runtime.load(bundle, engine="numpy", series=[part.id])
        got = np.stack([fc.step(r) for r in sub.series.inputs[a:b, :len(m["features"])]])
        np.testing.assert_allclose(m["series"][part.id]["base"], model.cfg.base_of(part.id), rtol=1e-12)
        scale = m["series"][part.id]["targets"]["scale"][0]
        warm = len(model.cfg.base_of(part.id)) - 1        # an AR base's lags: the device's fill up first
        np.testing.assert_allclose(got[warm:], want[warm:], rtol=1e-4, atol=TIERS["fp32"] * scale * 10)
        pooled = runtime.load(bundle, engine="numpy", series=["no-such-node"])
        assert pooled.series == [None]
        # an unknown node: the average of the known series' identities, as the C library's caller passes them
        from runtime.derived import full_inputs
        x = Scaler.from_manifest(m).normalize(full_inputs(m, sub.series.inputs[a:a + 3, :2], None))
        np.testing.assert_allclose(x[:, 2:], x[:1, 2:].repeat(3, 0))
        pooled.step(sub.series.inputs[a, :2])
        np.testing.assert_allclose(pooled.engine.x[0, 2:], x[0, 2:], rtol=1e-6)
        assert fc.engine.x[0, 2:].tolist() != pytest.approx(x[0, 2:].tolist())
    # serve maps each node to its series by name; an unknown node gets the pooled scale and is named once.
    import subprocess
    import sys
    feats = m["features"]
    lines = ["node," + ",".join(f["name"] for f in feats)]
    for part in data.series.parts:
        sub = data.part(part)
        a, b = sub.splits["test"][0]
        rows = sub.series.inputs[a:a + 20, :len(feats)]
        lines += [f"{part.id}," + ",".join(repr(float(v)) for v in r) for r in rows]
    lines.append("stranger," + ",".join(repr(float(v)) for v in rows[0]))
    p = subprocess.run([sys.executable, "-m", "runtime", "serve", bundle, "--stdin", "--stdout", "--engine", "numpy",
                        "--streams", "4"], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.count("'stranger' is none of this bundle's 2 series: it is forecast with the pooled scale "
                          "and the average series' identity") == 1
    assert "'small' is none" not in p.stderr and "'large' is none" not in p.stderr


def test_a_many_series_shadow_forecasts_each_node_in_its_series_scale(daphnet_bundle, tmp_path):
    """The shadow maps a node to its series as the live model does: the same model as candidate
    (another id) scores exactly the live model's MAE on a node 10x the pooled scale."""
    import json
    from conftest import copy_bundle, reseal
    from test_serve import period_of, readings
    from test_serve_edges import csv_text, serve_stdin
    live, m = _series_bundle(daphnet_bundle, tmp_path / "live")
    cand = copy_bundle(live, tmp_path / "cand")
    reseal(cand, {**m, "created": m["created"] + " (the candidate)"})
    features, x = readings(live, 200)
    state = tmp_path / "state"
    rc, got, err = serve_stdin(live, csv_text(features, 10 * x, period_of(live), node="big").encode(),
                               "--shadow", str(cand), "--state-dir", str(state))
    assert rc == 0 and got, err[-2000:]
    doc = json.load(open(state / "shadow_score.json"))
    assert doc["candidate_bundle"] != doc["live_bundle"] and min(doc["scored"]) > 100
    np.testing.assert_allclose(doc["candidate_mae"], doc["live_mae"], rtol=1e-5)


def test_serve_finds_each_nodes_series_in_a_model_of_several_devices(daphnet_bundle, tmp_path):
    """A model trained on several devices' collected data names its series device/node: with [model]
    device_name serve maps node 'big' to 'kitchen/big' (10x the pooled scale); without it a node whose
    name ends one series only ('base': 'kitchen/base') is that series, and one that ends several
    ('hall/big', 'kitchen/big') gets the pooled scale and a line naming device_name."""
    from conftest import reseal
    from test_serve import period_of, readings
    from test_serve_edges import csv_text, serve_stdin
    bundle, m = _series_bundle(daphnet_bundle, tmp_path / "b")
    s = m["series"]
    m["series"] = {"kitchen/big": s["big"], "hall/big": s["base"], "kitchen/base": s["base"]}
    reseal(bundle, m)
    features, x = readings(bundle, 40)
    period = period_of(bundle)

    def serve(node, scale, *extra):
        rc, got, err = serve_stdin(bundle, csv_text(features, scale * x, period, node=node).encode(), *extra)
        assert rc == 0 and got, err[-2000:]
        return np.array([[f["value"] for f in g["forecast"]] for g in got]), err
    pooled, err = serve("stranger", 1)
    assert "'stranger' is none of this bundle's 3 series" in err
    cfg = tmp_path / "device.toml"
    cfg.write_text('[model]\ndevice_name = "kitchen"\n')
    big, err = serve("big", 10, "--config", str(cfg))
    assert "none of this bundle" not in err and "matches" not in err
    np.testing.assert_allclose(big, 10 * pooled, rtol=1e-4)
    _, err = serve("big", 10)
    assert ("node 'big' matches 2 series ('hall/big', 'kitchen/big'): set [model] device_name to this device's name "
            "in the collected data; it is forecast with the pooled scale") in err
    from runtime.service.config import ConfigError, merge
    from runtime.streams import series_for
    known = m["series"]
    assert series_for(known, "base") == ("kitchen/base", ["kitchen/base"])          # one series ends in /base
    assert series_for(known, "big", "hall") == ("hall/big", ["hall/big"])
    assert series_for(known, "big") == (None, ["hall/big", "kitchen/big"])
    assert series_for(known, "attic", "kitchen") == (None, [])
    with pytest.raises(ConfigError, match="model.device_name = '': expected this device's name in the collected data"):
        merge({"stdin": {"enabled": True}, "stdout": {"enabled": True}, "model": {"device_name": ""}}, {})


def test_compare_local_trains_each_series_alone_on_the_same_test_split(tmp_path):
    """--compare-local: the table's local model of a series is that series trained alone (the same
    run as a one-series file with the same settings), scored on the same test split as the global one."""
    import json
    from conftest import run_module
    csv, alone = tmp_path / "three.csv", tmp_path / "alone.csv"
    rooms = [_room("a", n=700), _room("b", n=900, scale=10.0, seed=1), _room("c", n=500, seed=2)]
    _long(*rooms).to_csv(csv, index=False)
    rooms[1].drop(columns="node").to_csv(alone, index=False)
    common = ("--target", "value", "--hidden", "8", "--epochs", "2", "--horizon", "3", "--calendar", "none", "--quiet")
    p = run_module("train", "--data", str(csv), "--series-col", "node", *common, "--compare-local", "2",
                   "--out", str(tmp_path / "g.pt"))
    rows = json.load(open(tmp_path / "g.local.json"))
    assert [r["series"] for r in rows] == ["b", "a"] and "global_over_local" in p.stdout   # the largest first
    per = json.load(open(tmp_path / "g.metrics.json"))["metrics"]["test_per_series"]
    assert rows[0]["global_mae"] == per["b"]["GRU streamed"]["mae"]
    run_module("train", "--data", str(alone), *common, "--out", str(tmp_path / "b.pt"))
    local = json.load(open(tmp_path / "b.metrics.json"))["metrics"]["test"]["GRU streamed"]["mae"]
    assert rows[0]["local_mae"] == pytest.approx(local, rel=1e-9)
    own = json.load(open(tmp_path / "b.metrics.json"))["metrics"]["test"]         # where b alone loses
    best = np.min([v["per_step"]["mae"] for k, v in own.items() if not k.startswith("GRU")], axis=0)
    lost = [k + 1 for k, v in enumerate(own["GRU streamed"]["per_step"]["mae"]) if v >= best[k]]
    assert rows[0]["local_loses_steps"] == lost and lost                          # 2 epochs: it loses somewhere
    assert all(r["goal"] == "(<= 5,000 rows)" for r in rows)
    bad = run_module("train", "--data", str(alone), *common, "--compare-local", "1", "--out", str(tmp_path / "x.pt"),
                     check=False)
    assert bad.returncode == 2 and "needs many series" in bad.stderr and "Traceback" not in bad.stderr


def test_intervals_follow_each_streams_series_scale(daphnet_bundle, tmp_path):
    """A stream of a series 10x the pooled scale gets bounds 10x as far from its forecast as a pooled
    stream's, for the same normalized reading (the quantiles are stored in the pooled scale)."""
    import runtime
    bundle, _ = _series_bundle(daphnet_bundle, tmp_path / "b")
    # (not adapted: 10 r normalized by a 10x scale is r within a float ulp, and a truth on a bound
    # could fall inside for one stream and outside for the other, moving their adapted widths apart)
    fc = runtime.load(bundle, engine="numpy", streams=2, series=["big", None], intervals=True, adapt_intervals=False)
    for r in _readings(fc, 20):
        y = fc.step(np.stack([10 * r, r]))
        for lv, (lo, hi) in fc.bounds.items():
            np.testing.assert_allclose(hi[0] - y[0], 10 * (hi[1] - y[1]), rtol=1e-4)
            np.testing.assert_allclose(y[0] - lo[0], 10 * (y[1] - lo[1]), rtol=1e-4)
    fc.set_series(0, None)                              # back to the pooled scale: the same offsets
    y = fc.step(np.stack([r, r]))
    lo, hi = next(iter(fc.bounds.values()))
    np.testing.assert_allclose(hi[0] - y[0], hi[1] - y[1], rtol=1e-6)


def test_a_series_own_deadband_is_used_for_its_streams_only(daphnet_bundle, tmp_path):
    """Manifest `series.<id>.deadband` (format 8): a stream set to that series forecasts through its
    own thresholds; the pooled stream keeps the model's. A huge threshold: no change, the level."""
    import runtime
    from conftest import reseal
    from runtime.bundle import BundleError, format_version_for, read_manifest
    bundle, m = _series_bundle(daphnet_bundle, tmp_path / "b")
    k = m["model"]["horizon"]
    m["series"]["big"]["deadband"] = [1e6] * k
    m["format_version"] = 8
    reseal(bundle, m)
    assert format_version_for(m) == 8 and read_manifest(bundle)["series"]["big"]["deadband"] == [1e6] * k
    fc = runtime.load(bundle, engine="numpy", streams=3, series=["big", None, "base"])
    one = runtime.load(bundle, engine="numpy", series=["big"])
    plain = runtime.load(bundle, engine="numpy")
    j = m["model"]["residual_input"]
    for r in _readings(plain, n=40):
        rows, got, want = fc.step(np.stack([10 * r, r, r])), one.step(10 * r), plain.step(r)
        np.testing.assert_allclose(rows[0], np.full(k, 10 * r[j]), rtol=1e-5)   # the level: no change
        np.testing.assert_allclose(got, rows[0], rtol=1e-5)
        np.testing.assert_allclose(rows[1], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rows[2], want, rtol=1e-5, atol=1e-5)
    fc.set_series(0, None)                      # back to the pooled thresholds
    r = _readings(plain, n=1, seed=3)[0]
    np.testing.assert_allclose(fc.step(np.stack([r, r, r]))[0], plain.step(r), rtol=1e-4, atol=1e-4)
    for bad, why in (([1.0] * (k - 1), f"series.big.deadband' has {k - 1}"), ([-1.0] * k, "expected thresholds >= 0")):
        m["series"]["big"]["deadband"] = bad
        reseal(bundle, m)
        with pytest.raises(BundleError, match=why):
            read_manifest(bundle)
    m["series"]["big"]["deadband"], m["format_version"] = [0.1] * k, 7
    reseal(bundle, m)
    with pytest.raises(BundleError, match=r"a bundle that has a deadband per series \('series\.<id>\.deadband'\) is format 8"):
        read_manifest(bundle)


def test_each_series_deadband_in_the_model_config_round_trips_and_is_checked():
    import json
    from train.model import RecurrentConfig
    cfg = RecurrentConfig(input_size=3, hidden_size=8, horizon=2, residual_input=2, deadband=(0.1, 0.2),
                          series_deadband=(("a", (0.3, 0.4)),))
    again = RecurrentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))   # lists, as a checkpoint or JSON holds it
    assert again == cfg and again.deadband_of("a") == (0.3, 0.4)
    assert again.deadband_of("never-seen") == again.deadband_of(None) == (0.1, 0.2)
    with pytest.raises(ValueError, match=r"deadband needs a residual model and 2 finite values >= 0, got \[0.3\]"):
        RecurrentConfig(input_size=3, horizon=2, residual_input=2, series_deadband=(("a", (0.3,)),))


def test_each_series_counts_by_its_error_relative_to_no_change(tmp_path):
    """Many series: the loss weighs each series' steps by 1 / that series' own mean |change|, so no
    change (persistence) costs a quiet series as much as a lively one, and a near-constant series'
    weight is floored (StepLoss.MAX_SERIES_WEIGHT times the pooled one at most)."""
    from train.fit import StepLoss, normalized_target
    from train.prepare import split_rows
    rng = np.random.default_rng(0)
    quiet, lively, flat = _room("quiet", n=900), _room("lively", n=900, seed=1), _room("flat", n=900, seed=2)
    quiet["value"] = np.sin(2 * np.pi * np.arange(900) / 60) + 0.01 * rng.standard_normal(900)
    lively["value"] = rng.standard_normal(900)
    flat["value"] = 20 + 0.1 * (np.arange(900) // 300)      # one step in 300 rows
    path = tmp_path / "three.csv"
    _long(quiet, lively, flat).to_csv(path, index=False)
    data = prepare(load_series(str(path), "value", series_col="node"), horizon=3)
    loss, level, train = StepLoss(data), normalized_target(data), split_rows(data, "train")
    no_change = np.abs(data.y - level[:, None])                                        # [N, K]
    parts = {p.id: train[(train >= p.start) & (train < p.stop)] for p in data.series.parts}
    raw = {k: no_change[r].mean() for k, r in parts.items()}
    weighted = {k: (no_change[r] * loss.rows[r]).mean(0) for k, r in parts.items()}
    assert raw["lively"] > 3 * raw["quiet"]                       # unweighted, the quiet one hardly counts
    np.testing.assert_allclose(weighted["quiet"], weighted["lively"], rtol=1e-5)    # weighted, alike
    pooled = no_change[train].mean(0)
    floor = StepLoss.MAX_SERIES_WEIGHT / pooled                  # the flat series' weight, before the mean-1 scale
    scale = loss.rows[parts["lively"]].mean(0) * no_change[parts["lively"]].mean(0)   # 1 / spread, rescaled
    np.testing.assert_allclose(loss.rows[parts["flat"]].mean(0), floor * scale, rtol=1e-4)
    assert np.isclose(loss.rows[train].mean(), 1.0)


