"""Training stage: data handling, errors, model config, checkpoints, stability, metrics."""
import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import run_module, sensor_frame
from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from train.data import DataError, prepare_series
from train.evaluate import forecast_metrics
from train.model import RecurrentConfig, RecurrentModel
from train.prepare import prepare


def test_short_gaps_interpolated_long_gaps_split():
    df = sensor_frame(400)
    df.loc[10, "drive"] = np.nan                     # one missing cell: interpolated
    df = df.drop(index=range(100, 102))              # 2 dropped samples: bridged
    df = df.drop(index=range(200, 230))              # 30 dropped samples: split
    s = prepare_series(df.reset_index(drop=True), "temp")
    assert s.report.interpolated_cells == 1 + 2 * 3  # the cell, then 2 rows x 3 columns
    assert s.report.missing_samples == 2 and s.report.long_gaps == 1
    assert len(s.segments) == 2
    assert not np.isnan(np.concatenate([s.inputs[a:b] for a, b in s.segments])).any()
    assert s.period_s == 600


def test_irregular_and_unsorted_timestamps_reported():
    df = sensor_frame(200)
    df.loc[50, "time"] += np.timedelta64(3, "m")      # 30% off the period
    df = df.iloc[list(range(100, 200)) + list(range(100))]
    s = prepare_series(df.reset_index(drop=True), "temp")
    assert s.report.irregular_intervals == 2 and s.report.unsorted_rows > 0


@pytest.mark.parametrize("freq, season, name", [("h", 24, "1 day"), ("D", 7, "1 week"), ("12h", 2, "1 day")])
def test_seasonal_naive_never_reads_a_value_after_its_origin(freq, season, name):
    """Daily data's one-day season is one step: "seasonal naive (1 day)" forecast step k from the
    reading k - 1 steps *after* the origin (the helper's probe: the GRU "lost" to it at +2, +3). Now
    a season of at least two steps (a week for daily data), and step k takes the value of its
    season's last cycle before the origin."""
    import pandas as pd
    from train.evaluate import baselines, eval_positions
    n, horizon = 1200, 5
    t = np.arange(n, dtype=float)
    df = pd.DataFrame({"time": pd.date_range("2020-01-01", periods=n, freq=freq), "y": np.sin(t) + t / 100})
    data = prepare(prepare_series(df, "y"), horizon=horizon)
    pos = eval_positions(data, "test", 24)
    out = baselines(data, pos)
    got = out[f"seasonal naive ({name})"]
    k = np.arange(1, horizon + 1)
    want = data.series.target[pos[:, None] + k - season * np.ceil(k / season).astype(int)]
    np.testing.assert_array_equal(got, want)


def test_targets_interpolated_over_a_gap_are_never_scored():
    """A business-day series (no weekends): the grid interpolates every Saturday and Sunday, and the
    test metrics scored the forecasts against those made-up, linear values as if read (29% of the
    scores). Now only targets with a reading are scored; the model still trains on the bridge."""
    import pandas as pd
    from train.evaluate import baselines, eval_positions, forecast_metrics, persistence_scale, scored_truth
    from train.prepare import prepare
    t = pd.bdate_range("2020-01-01", periods=700)
    df = pd.DataFrame({"time": t, "close": 100 + np.cumsum(np.random.default_rng(0).normal(0, 1, 700))})
    data = prepare(prepare_series(df, "close"), horizon=3)
    assert data.series.interpolated.sum() == data.series.report.interpolated_cells > 250
    pos = eval_positions(data, "test", 24)
    truth = scored_truth(data, pos)
    days = (pos[:, None] + np.arange(1, 4)).ravel()
    weekend = (pd.DatetimeIndex(t[0] + pd.to_timedelta(days, "D")).day_of_week >= 5).reshape(len(pos), 3)
    assert (np.isnan(truth) == weekend).all()
    pred = baselines(data, pos)["persistence"]
    m = forecast_metrics(truth, pred, persistence_scale(data))
    want = np.abs(pred - data.y_raw[pos])[~weekend].mean()
    assert m["mae"] == pytest.approx(want) and m["n"] == len(pos)


def test_too_few_rows_says_how_many_are_needed():
    """80 monthly-like rows at horizon 1 were told "supply more data or a shorter horizon" (there is
    none shorter) without a number; now the message says about how many readings it takes."""
    import pandas as pd
    from train.prepare import prepare
    df = pd.DataFrame({"time": pd.date_range("2020-01-01", periods=80, freq="h"), "y": np.sin(np.arange(80.0))})
    with pytest.raises(DataError, match=r"about 95 readings in one piece\); supply more data$"):
        prepare(prepare_series(df, "y"), horizon=1)


def test_a_resent_reading_keeps_the_first_value_as_the_device_does():
    """A logger that re-sends its last 50 readings with other values: training kept the last of
    each time, serve and stream the first (a second reading of a period is dropped there), so the
    model learned readings the device never used. And the 50 re-sent rows counted as 98 moved
    positions in the report; now a row is out of order when an earlier row's time is after it (49:
    the last re-sent row follows its twin)."""
    df = sensor_frame(200)
    resent = df.iloc[150:].assign(temp=df.temp.iloc[150:] + 50)
    import pandas as pd
    s = prepare_series(pd.concat([df, resent]).reset_index(drop=True), "temp")
    assert s.report.duplicate_timestamps == 50 and s.report.unsorted_rows == 49
    np.testing.assert_allclose(s.target, df.temp.to_numpy())


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "nope"}, "target column 'nope' not found; columns are: time, drive, other, temp"),
    ({"target": "temp", "features": ("drive", "ghost")}, "unknown feature column(s) ghost"),
    ({"target": "temp", "features": ("drive", "label")}, "column 'label' is not numeric"),
])
def test_bad_columns_name_the_problem(kwargs, message):
    df = sensor_frame(200)
    df["label"] = ["a", "b"] * 100
    with pytest.raises(DataError, match=None) as e:
        prepare_series(df, **kwargs)
    assert message in str(e.value)


def test_default_features_skip_text_and_count_bad_cells():
    df = sensor_frame(200).astype({"drive": object})
    df["label"] = "x"
    df.loc[5, "drive"] = "ERR"
    s = prepare_series(df, "temp")
    assert s.features == ["drive", "other", "temp"]
    assert s.report.skipped_columns == ["label"] and s.report.non_numeric_cells == {"drive": 1}


def test_constant_column_and_too_few_rows_rejected():
    df = sensor_frame(300)
    df["flat"] = 1.0
    with pytest.raises(DataError, match="constant column.*flat"):
        prepare(prepare_series(df, "temp"), horizon=6)
    with pytest.raises(DataError, match="too few rows for horizon 6"):
        prepare(prepare_series(sensor_frame(40), "temp"), horizon=6)


def test_scaler_fitted_on_training_split_only():
    df = sensor_frame(1000)
    df.loc[700:, "other"] += 100.0                   # only validation/test shift
    data = prepare(prepare_series(df, "temp"), horizon=3)
    i = data.series.features.index("other")
    train_end = data.splits["train"][-1][1] + 3
    assert data.in_scaler.offset[i] == pytest.approx(df["other"][:train_end].mean(), rel=1e-6)
    assert data.splits["train"][-1][1] <= data.splits["val"][0][0] <= data.splits["test"][0][0]


def test_config_round_trip_and_validation():
    cfg = RecurrentConfig(input_size=3, hidden_size=8, num_layers=2, horizon=4, residual_input=2)
    assert RecurrentConfig.from_dict(cfg.to_dict()) == cfg and cfg.output_size == 4
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        RecurrentConfig(input_size=3, cell="rnn")
    with pytest.raises(ValueError, match="unknown config field"):
        RecurrentConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_init_is_xavier_orthogonal_zero_bias():
    m = RecurrentModel(RecurrentConfig(input_size=3, hidden_size=8))
    w = m.rnn.weight_hh_l0.detach()[:8]
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)
    assert float(m.rnn.bias_ih_l0.abs().max()) == 0.0


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    m = RecurrentModel(RecurrentConfig(input_size=3, hidden_size=8))
    path = str(tmp_path / "sub" / "m.pt")
    save_checkpoint(path, m, {"features": ["a", "b", "c"], "scale": np.float64(2.0)})
    assert torch.load(path, weights_only=True)["scale"] == 2.0
    m2, ck = load_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    (tmp_path / "trunc.pt").write_bytes(open(path, "rb").read()[:500])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "trunc.pt"))
    torch.save({"model": m.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign"):
        load_checkpoint(str(tmp_path / "foreign.pt"))
    ck["config"]["hidden_size"] = 16
    torch.save(ck, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"weight_hh_l0 is \(24, 8\), config implies \(48, 16\)"):
        load_checkpoint(str(tmp_path / "shape.pt"))


def test_metrics_against_hand_values():
    y = np.array([[1.0, 2.0], [3.0, 4.0]])
    p = y + np.array([[1.0, -1.0], [0.0, 2.0]])
    m = forecast_metrics(y, p, scale=np.array([1.0, 2.0]))
    assert m["mae"] == pytest.approx(1.0) and m["rmse"] == pytest.approx(math.sqrt(1.5))
    assert m["per_step"]["mase"] == pytest.approx([0.5, 0.75]) and m["mase"] == pytest.approx(1 / 1.5)


def test_cli_on_real_data_writes_outputs(daphnet_checkpoint):
    stem = os.path.splitext(daphnet_checkpoint)[0]
    for ext in (".metrics.json", ".curves.png", ".forecast.png", ".steps.png"):
        assert os.path.getsize(stem + ext) > 0
    metrics = json.load(open(stem + ".metrics.json"))["metrics"]
    assert {"GRU streamed", "persistence", "linear AR(24)"} <= set(metrics["test"])
    assert all(len(m["per_step"]["mae"]) == 6 for m in metrics["test"].values())        # MAE per horizon step
    _, ck = load_checkpoint(daphnet_checkpoint)
    assert ck["features"][0] == "ankle_horiz_fwd" and "is_anomaly" not in ck["features"]
    a, b = ck["series"]["splits"]["test"][0]
    assert b - a >= 1000 and ck["series"]["inputs"].shape[1] == len(ck["features"])
    assert "horizon" not in ck and "feature_mean" not in ck and ck["config"]["horizon"] == 6


def test_cli_bad_csv_gives_one_line_error(tmp_path):
    df = sensor_frame(300)
    df["status"] = "ok"
    df.to_csv(tmp_path / "s.csv", index=False)
    p = run_module("train", "--data", str(tmp_path / "s.csv"), "--target", "tmp", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == ("error: target column 'tmp' not found; columns are: time, drive, other, "
                                "temp, status")


def test_search_writes_a_validation_ranked_table(tmp_path):
    from train.search import parse_grid
    with pytest.raises(ValueError, match="unknown search parameter 'width'"):
        parse_grid("width=3")
    # the keys given are the grid: the README's 2 x 2 ran 16 points (the default grid's lists filled in the rest)
    assert parse_grid("hidden_size=16,32;members=1,2") == {"hidden_size": [16, 32], "members": [1, 2]}
    out = tmp_path / "s.pt"
    run_module("train", "--data", "daphnet", "--search", "hidden_size=4,8;num_layers=1;dropout=0", "--epochs", "1",
               "--quiet", "--out", str(out))
    rows = json.load(open(tmp_path / "s.search.json"))
    assert sorted(r["hidden_size"] for r in rows) == [4, 8]
    assert rows[0]["val_loss"] <= rows[1]["val_loss"]
    assert "| dropout | hidden_size |" in (tmp_path / "s.search.md").read_text()
    assert os.path.exists(out)                       # the best grid point is saved


def test_extreme_and_unparsable_cells_become_counted_missing_values():
    """1e30 made a feature's scale 3e28, inf looked like a constant column, and a column with 14%
    'err' cells was dropped whole as non-numeric."""
    df = sensor_frame(600).astype({"drive": object})
    df.loc[100, "other"] = 1e30
    df.loc[200, "temp"] = np.inf
    df.loc[::7, "drive"] = "err"                     # 14% of the cells
    s = prepare_series(df, "temp")
    assert s.features == ["drive", "other", "temp"]
    assert s.report.non_numeric_cells == {"drive": 86}
    assert s.report.extreme_cells["other"][0] == 1 and s.report.extreme_cells["temp"][0] == 1
    assert any("extreme value(s) treated as missing (e.g. 1e+30" in line for line in s.report.lines())
    data = prepare(s, horizon=3)
    assert data.in_scaler.scale[1] < 10 and np.isfinite(data.in_scaler.scale).all()


def test_rare_spikes_of_a_heavy_tailed_sensor_are_kept():
    df = sensor_frame(600)
    rain = np.zeros(600)
    rain[[50, 200, 400]] = [5.0, 40.0, 12.0]
    df["rain"] = rain
    s = prepare_series(df, "temp")
    assert "rain" not in s.report.extreme_cells and s.inputs[:, s.features.index("rain")].max() == 40.0


def test_an_empty_target_says_so():
    df = sensor_frame(300)
    df["temp"] = np.nan
    with pytest.raises(DataError, match="target column 'temp' has no numeric values"):
        prepare_series(df, "temp")


def test_train_show_and_compare(daphnet_checkpoint, tmp_path):
    p = run_module("train", "show", daphnet_checkpoint)
    assert "GRU streamed" in p.stdout and "persistence" in p.stdout and "horizon 6" in p.stdout
    steps = p.stdout[p.stdout.index("MAE per step"):].splitlines()
    assert steps[0].split()[-6:] == ["+1", "+2", "+3", "+4", "+5", "+6"]
    assert sum("*" in line for line in steps[2:]) >= 1          # the best model at each step is starred
    run_module("train", "--data", "daphnet", "--compare", str(tmp_path / "c.md"), "--hidden", "4", "--epochs", "1",
               "--quiet")
    rows = {r["cell"]: r for r in json.load(open(tmp_path / "c.json"))}
    assert set(rows) == {"gru", "lstm"} and rows["gru"]["parameters"] < rows["lstm"]["parameters"]
    assert "| cell |" in (tmp_path / "c.md").read_text()


def _train_cmd(tmp_path, *extra):
    import sys
    csv = tmp_path / "sensor.csv"
    sensor_frame(3000).to_csv(csv, index=False)
    return [sys.executable, "-m", "train", "--data", str(csv), "--target", "temp", "--horizon", "3", "--hidden", "8",
            "--out", str(tmp_path / "ck.pt"), *extra]


def test_training_prints_epoch_lines_and_saves_the_best_on_sigint(tmp_path):
    """Not a terminal: one line per epoch; SIGINT ends training cleanly with the best checkpoint so far."""
    import signal
    import subprocess
    from conftest import ROOT
    p = subprocess.Popen(_train_cmd(tmp_path, "--epochs", "500", "--patience", "500"), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if sum(ln.startswith("epoch ") for ln in lines) == 2:
            p.send_signal(signal.SIGINT)
            break
    out = "".join(lines) + p.stdout.read()
    assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
    epoch_lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert epoch_lines[0].startswith("epoch 1/500: train ") and "ETA" in epoch_lines[0]
    assert "stopped by interrupted" in out and (tmp_path / "ck.pt").exists()
    ck = json.load(open(tmp_path / "ck.metrics.json"))
    assert ck["metrics"]["stopped"] == "interrupted" and ck["metrics"]["epochs_run"] < 500


def test_max_minutes_ends_training_with_the_best_weights(tmp_path):
    out = run_module(*_train_cmd(tmp_path, "--epochs", "500", "--patience", "500", "--max-minutes", "0.02")[2:]).stdout
    assert "stopped by time budget" in out and (tmp_path / "ck.pt").exists()


def test_help_shows_every_default():
    import argparse
    from train.__main__ import parser
    for action in parser()._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help, f"{action.option_strings} has no help (so no default shown)"


def test_units_from_headers_and_flags(tmp_path):
    from train.data import load_series
    df = sensor_frame(300).rename(columns={"temp": "temp [degC]", "other": "other[%]"})
    df.to_csv(tmp_path / "s.csv", index=False)
    s = load_series(str(tmp_path / "s.csv"), "temp", units=(("drive", "V"),))
    assert s.features == ["drive", "other", "temp"] and s.target_name == "temp"
    assert s.units == {"drive": "V", "other": "%", "temp": "degC"}


def test_a_unit_that_is_no_short_printable_name_is_one_line(tmp_path):
    """A unit goes from the file into the bundle, MQTT, Home Assistant and C: a header's, a Parquet
    field's or a flag's unit must be 1-64 printable characters, as the bundle's check says."""
    from train.data import load_series
    from train.table import DataError
    df = sensor_frame(300).rename(columns={"temp": f"temp [{'u' * 65}]"})     # (control characters: check_names)
    df.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DataError, match=r"column 'temp': unit 'u+'\.\.\. \(65 characters\): expected 1-64 printable"):
        load_series(str(tmp_path / "s.csv"), "temp")
    sensor_frame(300).to_csv(tmp_path / "s.csv", index=False)
    for bad in ("a\tb", "deg\u202eC"):
        with pytest.raises(DataError, match=r"column 'drive': unit .*expected 1-64 printable characters"):
            load_series(str(tmp_path / "s.csv"), "temp", units=(("drive", bad),))
    assert load_series(str(tmp_path / "s.csv"), "temp", units=(("drive", "w" * 64),)).units["drive"] == "w" * 64
    df = sensor_frame(300).assign(note="x").rename(columns={"note": f"note [{'u' * 80}]"})   # a column not used
    df.to_csv(tmp_path / "s.csv", index=False)
    assert "note" not in load_series(str(tmp_path / "s.csv"), "temp", exclude=("note",)).units


def test_ridge_baseline_uses_every_channel_and_the_verdict_names_losing_steps():
    """The target follows another channel three steps late: AR on the target alone cannot see it
    coming, a ridge on lags of every channel can (K and λ chosen on validation)."""
    import pandas as pd
    from train.evaluate import baselines, eval_positions, forecast_metrics, persistence_scale
    from train.pipeline import step_verdict
    rng = np.random.default_rng(0)
    n = 3000
    drive = np.convolve(rng.standard_normal(n + 10), np.ones(5) / 5, mode="same")[:n]
    temp = np.roll(drive, 3) + 0.02 * rng.standard_normal(n)
    df = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=n, freq="1min"), "drive": drive, "temp": temp})
    data = prepare(prepare_series(df, "temp"), horizon=3)
    pos = eval_positions(data, "test", 24)
    out = baselines(data, pos)
    scale = persistence_scale(data)
    m = {k: forecast_metrics(data.y_raw[pos], v, scale) for k, v in out.items()}
    ridge = next(k for k in m if k.startswith("ridge"))
    assert m[ridge]["mae"] < 0.5 * m["linear AR(24)"]["mae"], {k: v["mae"] for k, v in m.items()}
    m["GRU streamed"] = m["persistence"]                  # a model no better than persistence
    lines = step_verdict(m, "GRU")
    assert lines[0] == "per step: loses to the best baseline at step(s) 1, 2, 3 (MAE)"


def test_calendar_inputs_are_chosen_by_sampling_period_and_span(tmp_path):
    from tests.conftest import calendar_frame
    from train.calendar import add_calendar, choose
    from train.data import DataError, load_series
    day = 86400.0
    assert choose("auto", 600.0, 30 * day) == ["day", "week"]
    assert choose("auto", 3600.0, 10 * day) == ["day"]            # under three weeks: no day of week
    assert choose("auto", day, 400 * day) == ["week"]             # daily samples: no time of day
    assert choose("auto", 0.0156, 600.0) == []                    # Daphnet: minutes of 64 Hz data
    assert choose("auto", None, 0.0) == [] and choose("none", 600.0, 30 * day) == []
    with pytest.raises(DataError, match="needs timestamps"):
        choose("day", None, 0.0)
    with pytest.raises(DataError, match="is not one of"):
        choose("month", 600.0, 30 * day)
    path = tmp_path / "cal.csv"
    calendar_frame().to_csv(path, index=False)
    s = add_calendar(load_series(str(path), "load"))
    assert s.features == ["temp", "load"] and s.inputs.shape[1] == 6
    assert s.input_names[2:] == ["time_of_day_sin", "time_of_day_cos", "day_of_week_sin", "day_of_week_cos"]
    hour = np.arange(len(s.target)) % 24                          # the frame starts at midnight
    assert np.allclose(s.inputs[:, 2], np.sin(2 * np.pi * hour / 24), atol=1e-9)


def _paris_frame():
    """Hourly readings stamped with naive Paris wall-clock times, 2026-03-01 .. 2026-11-15: the
    spring-forward hour is absent and the fall-back hour appears twice, as a local logger writes them."""
    import pandas as pd
    from datetime import datetime
    from zoneinfo import ZoneInfo
    epochs = datetime(2026, 3, 1).timestamp() // 3600 * 3600 + 3600.0 * np.arange(24 * 259)
    paris = ZoneInfo("Europe/Paris")
    local = [datetime.fromtimestamp(e, paris) for e in epochs]
    rng = np.random.default_rng(0)
    load = 100 + 40 * np.sin(2 * np.pi * np.array([t.hour for t in local]) / 24) + rng.standard_normal(len(local))
    times = [t.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S") for t in local]
    return pd.DataFrame({"time": times, "temp": 15 + rng.standard_normal(len(local)), "load": load}), epochs


def test_a_time_zone_series_is_regular_across_dst_and_the_device_reproduces_its_calendar(tmp_path):
    from runtime.derived import DerivedInputs
    from train.pipeline import DataSpec, load_prepared
    df, epochs = _paris_frame()
    df.to_csv(tmp_path / "paris.csv", index=False)
    s = load_prepared(DataSpec(str(tmp_path / "paris.csv"), "load", timezone="Europe/Paris", calendar="day,week")).series
    r = s.report
    assert (r.duplicate_timestamps, r.missing_samples, r.irregular_intervals, len(s.target)) == (0, 0, 0, len(df))
    assert s.derived["timezone"] == "Europe/Paris" and "utc_offset_s" not in s.derived
    assert s.start_s == epochs[0] and s.period_s == 3600.0
    d = DerivedInputs(s.derived)
    device = np.stack([d.values(float(e)).copy() for e in epochs])                # epoch seconds
    assert np.max(np.abs(device - s.inputs[:, 2:])) <= 1e-9
    d = DerivedInputs(s.derived)
    naive = np.stack([d.values(t).copy() for t in df["time"]])                     # the CSV's naive times, in order
    assert np.max(np.abs(naive - s.inputs[:, 2:])) <= 1e-9


def test_train_writes_the_time_zone_and_refuses_an_unknown_one(tmp_path):
    df, _ = _paris_frame()
    df.iloc[-24 * 40:].to_csv(tmp_path / "paris.csv", index=False)                 # October-November: the fall-back
    ck = tmp_path / "m.pt"
    run_module("train", "--data", str(tmp_path / "paris.csv"), "--target", "load", "--timezone", "Europe/Paris",
               "--epochs", "1", "--hidden", "4", "--horizon", "2", "--quiet", "--out", str(ck))
    _, meta = load_checkpoint(str(ck))
    assert meta["derived_inputs"]["timezone"] == "Europe/Paris" and meta["data_report"]["duplicate_timestamps"] == 0
    p = run_module("train", "--data", str(tmp_path / "paris.csv"), "--target", "load", "--timezone", "Europe/Pariss",
                   check=False)
    assert p.returncode == 2 and "time zone 'Europe/Pariss' is unknown; expected an IANA name" in p.stderr
    p = run_module("train", "--data", "x.csv", "--timezone", "UTC", "--utc-offset-hours", "1", check=False)
    assert p.returncode == 2 and "not allowed with argument" in p.stderr
