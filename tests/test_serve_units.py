"""`runtime serve`'s parts without a broker: topics and payloads, the clock, the configuration."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT
from runtime.service.clock import TickClock
from runtime.service.config import ConfigError, merge, read_toml
from runtime.readings import Malformed, open_append
from runtime.service.payload import TopicPattern, decode_payload
from runtime.times import BundleClock

parse_time = BundleClock().epoch


def test_topic_patterns_and_payloads():
    p = TopicPattern("sensors/+/state")
    assert p.subscription == "sensors/+/state" and p.match("sensors/kitchen/state") == ("kitchen", None)
    assert p.match("sensors/kitchen/other") is None
    q = TopicPattern("home/{node}/{feature}")
    assert q.subscription == "home/+/+" and q.match("home/n7/T1") == ("n7", "T1")
    with pytest.raises(ValueError, match="not supported"):
        TopicPattern("sensors/#")
    fields = {"T1": "T1", "temp": "T1", "RH": "RH"}
    assert decode_payload(b'{"temp": 21.5, "RH": null, "time": "2026-01-01T00:00:00Z"}', fields, None, False) == (
        {"T1": 21.5, "RH": pytest.approx(float("nan"), nan_ok=True)}, "2026-01-01T00:00:00Z")   # read by the service
    assert decode_payload(b"21.5", fields, "T1", False) == ({"T1": 21.5}, None)
    for bad, why in ((b"{not json", "not JSON"), (b"[1, 2]", "expected an object"), (b'{"T1": "hot"}', "expected a number"),
                     (b'{"T1": "true"}', "expected a number"), (b'{"bogus": 1}', "unknown field"),
                     (b'{"T1": 1, "time": {"a": 1}}', "expected ISO"), (b"x" * 1_000_000, "over")):
        with pytest.raises(Malformed, match=why):
            decode_payload(bad, fields, None, False)
    assert decode_payload(b'{"T1": 1, "linkquality": 80}', fields, None, True)[0] == {"T1": 1.0}
    # A contact as zigbee2mqtt sends it: 1 and 0, as training reads a column of TRUE and FALSE (it was malformed)
    assert decode_payload(b'{"T1": true, "RH": false}', fields, None, False)[0] == {"T1": 1.0, "RH": 0.0}
    assert decode_payload(b"true", fields, "T1", False) == ({"T1": 1.0}, None)
    assert parse_time("1700000000") == parse_time(1_700_000_000_000) == parse_time("2023-11-14T22:13:20+00:00")


def test_clock_aggregates_fills_gaps_and_drops_late():
    """Event times in the past (a replay), arriving at wall time W and after."""
    W = 1000.0
    c = TickClock(10.0, streams=2, n_features=1, grace_s=1.0)
    row = lambda v: np.array([v])  # noqa: E731
    c.add(0, 100.0, row(1.0), now=W)
    c.add(0, 105.0, row(3.0), now=W)              # same period: mean 2
    c.add(1, 101.0, row(7.0), now=W)
    assert c.close_ready(now=W + 0.1) == []       # nobody has moved on, the grace has not passed
    c.add(0, 131.0, row(5.0), now=W + 0.2)        # stream 0 jumps to period 13; stream 1 is still active in 10
    assert c.close_ready(now=W + 0.3) == []
    ticks = c.close_ready(now=W + 1.3)            # period 10 closes on the grace
    assert [t.period for t in ticks] == [10]
    ticks += c.close_ready(now=W + 2.4)           # 11 and 12 are a gap: stream 1 gets the grace for each
    ticks += c.close_ready(now=W + 3.5)
    assert [t.period for t in ticks] == [10, 11, 12]
    np.testing.assert_array_equal(ticks[0].x[:, 0], [2.0, 7.0])
    assert np.isnan(ticks[1].x).all() and not ticks[1].seen.any()
    assert c.classify(0, 119.0, now=W) == "late" and c.classify(0, 1e12, now=W) == "future"
    assert c.classify(0, 131.0 + 31 * 10, now=W + 3.6) == "ahead"     # one of two active streams: no quorum
    assert c.classify(1, 131.0 + 31 * 10, now=W + 3.6) == "jump"      # both: the clock follows
    last = TickClock(10.0, streams=1, n_features=1, aggregate="last")
    last.add(0, 100.0, row(1.0), now=W)
    last.add(0, 109.0, row(4.0), now=W)
    last.add(0, 110.0, row(9.0), now=W)           # a later period: period 10 closes at once
    assert [float(t.x[0, 0]) for t in last.close_ready(now=W)] == [4.0]
    # a replay's end: the last period closes after the grace, and no invented empty period follows
    assert [t.period for t in last.close_ready(now=W + 2.0)] == [11]
    assert last.close_ready(now=1e6) == []
    live = TickClock(10.0, streams=1, n_features=1, grace_s=1.0)   # live: event time = wall time
    live.add(0, 2005.0, row(1.0), now=2005.0)
    assert live.close_ready(now=2010.5) == [] and [t.period for t in live.close_ready(now=2011.0)] == [200]
    assert [t.period for t in live.close_ready(now=2021.0)] == [201]      # silence: empty ticks on the wall clock


def test_a_ticks_time_is_when_its_readings_were_taken():
    """The calendar inputs' time: the mean time of the period's readings; an empty period keeps the
    last readings' offset from its start, through a checkpoint and back."""
    W = 1000.0
    c = TickClock(10.0, streams=2, n_features=1, grace_s=1.0)
    c.add(0, 103.0, np.array([1.0]), now=W)
    c.add(1, 104.0, np.array([2.0]), now=W)
    c.add(0, 133.0, np.array([3.0]), now=W)
    c.add(1, 133.0, np.array([3.0]), now=W)
    ticks = c.close_ready(now=W + 5)
    assert [(t.period, t.start_s, t.time_s) for t in ticks] == [(10, 100.0, 103.5), (11, 110.0, 113.5), (12, 120.0, 123.5)]
    again = TickClock(10.0, streams=2, n_features=1, grace_s=1.0)
    again.load_json(json.loads(json.dumps(c.to_json())), now=W + 5)
    assert [t.time_s for t in again.close_ready(now=W + 5, flush=True)] == [133.0]
    freed = TickClock(10.0, streams=2, n_features=1)
    freed.add(0, 101.0, np.array([1.0]), now=W)
    freed.add(1, 109.0, np.array([1.0]), now=W)
    freed.forget(1)                                     # a freed slot's readings leave the mean time too
    assert [t.time_s for t in freed.close_ready(now=W, flush=True)] == [101.0]
    early = TickClock(10.0, streams=1, n_features=1)
    early.add(0, 109.999, np.array([1.0]), now=W)       # a hair early for period 11: a hair before its start
    assert [t.time_s for t in early.close_ready(now=W, flush=True)] == [pytest.approx(109.999)]


@pytest.mark.parametrize("period", [1 / 64, 0.016, 0.5, 600.0])
def test_forecast_times_are_written_alike_and_exact(period):
    """A 64 Hz stream's labels: `...:03Z` beside `...:02.984Z` sorted out of order as text, and
    15.625 ms written in whole ms as 15 ms."""
    from runtime.service.sinks import ForecastFormat
    fmt = ForecastFormat({"targets": [{"name": "y"}], "bundle_id": "b", "model": {"horizon": 3}}, period)
    start = 1_700_000_400
    labels = [fmt.times(start + i * period)[0] for i in range(200)]
    assert len({len(t) for t in labels}) == 1 and labels == sorted(labels)
    for t in fmt.times(start + 191 * period)[1]:
        assert (parse_time(t) - start) / period == pytest.approx(round((parse_time(t) - start) / period), abs=1e-4)


def test_config_errors_name_the_key(tmp_path):
    base = {"mqtt": {"broker": "127.0.0.1:1883", "subscribe": [{"topic": "s/+/state"}], "publish": [{"topic": "f/{node}"}]}}
    assert merge(base, {})["model"]["streams"] == 64
    shipped = merge(read_toml(os.path.join(ROOT, "flash", "device.toml")), {})       # the example config is valid
    assert shipped["mqtt"]["subscribe"][0]["ignore_extra_fields"] is True
    for bad, key in (({"model": {"stream": 4}}, "model.stream"), ({"model": {"streams": "4"}}, "model.streams"),
                     ({"clock": {"aggregate": "median"}}, "clock.aggregate"), ({"mqtt": {"broker": "nohost:"}}, "mqtt.broker"),
                     ({"mqtt": {"subscribe": []}}, "no source"), ({"bogus": {}}, "bogus")):
        with pytest.raises(ConfigError, match=key):
            merge(base, bad)


def test_capture_config_needs_a_state_dir_and_sane_limits(tmp_path):
    base = {"stdin": {"enabled": True}, "stdout": {"enabled": True}}
    with pytest.raises(ConfigError, match="no state dir for capture.db"):
        merge({**base, "capture": {"enabled": True}}, {})
    for key, v in (("capture_mb", 0), ("capture_days", -1)):
        with pytest.raises(ConfigError, match=f"capture.{key}"):
            merge({**base, "capture": {key: v}}, {})
    with pytest.raises(ConfigError, match="capture.bogus: unknown key"):
        merge({**base, "capture": {"bogus": 1}}, {})
    cfg = merge({**base, "capture": {"enabled": True, "capture_days": 7}}, {"state": {"dir": str(tmp_path)}})
    assert cfg["capture"] == {"enabled": True, "capture_days": 7, "capture_mb": 100}
    with pytest.raises(ConfigError, match="model.nan_policy = 'raise': expected one of hold, mean"):
        merge({**base, "model": {"nan_policy": "raise"}}, {})


def test_a_device_roots_release_keeps_its_state_in_root_state(tmp_path):
    from runtime.service.config import default_state_dir
    (tmp_path / "releases" / "abc").mkdir(parents=True)
    (tmp_path / "current").symlink_to("releases/abc")
    assert default_state_dir(str(tmp_path / "current")) == str(tmp_path / "state")
    assert default_state_dir(str(tmp_path / "releases" / "abc")) is None


def test_shadow_config_is_checked_and_a_flashed_shadow_is_found(tmp_path):
    base = {"stdin": {"enabled": True}, "stdout": {"enabled": True}}
    assert merge(base, {})["shadow"] == {"auto_rollback": False, "retrain_window": 1000}
    with pytest.raises(ConfigError, match="shadow.retrain_window = 0: expected >= 1"):
        merge({**base, "shadow": {"retrain_window": 0}}, {})
    with pytest.raises(ConfigError, match="shadow.bundle = '3': expected str"):
        merge({**base, "shadow": {"bundle": 3}}, {})
    with pytest.raises(ConfigError, match="shadow.bogus: unknown key"):
        merge({**base, "shadow": {"bogus": 1}}, {})
    from runtime.service.config import default_shadow
    root = tmp_path / "root"
    (root / "releases" / "a").mkdir(parents=True)
    os.symlink("releases/a", root / "current")
    assert default_shadow(str(root / "current")) is None                 # none flashed
    os.symlink("releases/a", root / "shadow")
    assert default_shadow(str(root / "current")) == str(root / "shadow")
    assert default_shadow(str(root / "releases" / "a")) is None          # not run as a device root's current


def test_a_section_that_is_no_table_is_one_config_error():
    """`model = 5` in device.toml crashed merge with AttributeError ('int' object has no attribute 'update')."""
    base = {"stdin": {"enabled": True}, "stdout": {"enabled": True}}
    for section in ("model", "mqtt", "stdin"):
        with pytest.raises(ConfigError, match=rf"\[{section}\] is 5 \(int\); expected a table"):
            merge({**base, section: 5}, {"model": {"streams": 4}, "stdin": {"enabled": True}})


def test_node_ids_that_are_no_topic_level_are_refused_and_named_apart_from_full_slots():
    """A node id with an MQTT wildcard (+, #) took a slot, and publishing its forecast raised inside the
    tick: every node after it in that tick lost its forecast. A full-slot refusal of a node named
    'printable' was counted as malformed (the kind was read from the message's words)."""
    from runtime.service.slots import NotANode, Refused, Slots
    slots = Slots(1)
    for node in ("x+y", "a#", "", "a\nb", "x" * 129):
        with pytest.raises(NotANode):
            slots.check_id(node)
    slots.assign("a", 0.0)
    with pytest.raises(Refused) as e:
        slots.assign("printable", 0.0)
    assert not isinstance(e.value, NotANode)
    assert slots.restore({"nodes": {"x+y": 0}}, 0.0) == 1            # nor does a checkpoint bring one back


def test_the_node_of_a_line_source_is_a_node_id():
    """`[stdin] node = ""` was accepted, and every reading without a node column was then malformed."""
    for node in ("", "a+b", "x" * 200):
        with pytest.raises(ConfigError, match=r"stdin\.node: node id"):
            merge({"stdin": {"enabled": True, "node": node}, "stdout": {"enabled": True}}, {})
    with pytest.raises(ConfigError, match=r"serial\.node: node id"):
        merge({"serial": {"url": "/dev/null", "node": ""}, "stdout": {"enabled": True}}, {})


def test_an_auto_rollback_that_cannot_be_made_keeps_serving(tmp_path, capsys):
    """No `previous` link (or a read-only disk): the OSError escaped the stats publication and
    serve exited, with `current` maybe switched and the record unmarked."""
    from runtime.service.rollback import AutoRollback
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "promoted").write_text("t new old 0.5 0.02\n")
    rb = AutoRollback(str(tmp_path), str(tmp_path / "state"), window=4)
    assert rb._switch(("new", "old", 0.5, 0.02), 0.9, None) is False
    assert "auto-rollback from new to old failed" in capsys.readouterr().err
    assert rb.check() is False and rb.failed


def test_a_number_that_is_no_finite_number_is_a_config_error():
    """grace_s = nan or stats_every_s = inf passed the `>= 0` checks (nan compares false)."""
    base = {"stdin": {"enabled": True}, "stdout": {"enabled": True}}
    for section, key in (("clock", "grace_s"), ("mqtt", "stats_every_s"), ("model", "slot_idle_s")):
        for v in (float("nan"), float("inf")):
            with pytest.raises(ConfigError, match=rf"{section}\.{key} = (nan|inf): expected a finite number"):
                merge(base, {section: {key: v}})


def test_an_output_csv_ending_inside_a_row_is_cut_back_before_appending(tmp_path, capsys):
    """A probe (2026-12-07) filled the disk under serve's CSV: its last row was left half written, and
    the next run's first row was appended onto it (64 fields in a file of 33)."""
    path = tmp_path / "out.csv"
    path.write_text("node,time,y1\na,1,2.5\nb,2,3.")
    f, fresh = open_append(str(path), ["node", "time", "y1"])
    f.write("c,3,4.5\n")
    f.close()
    assert not fresh and path.read_text() == "node,time,y1\na,1,2.5\nc,3,4.5\n"
    assert "ended inside a row" in capsys.readouterr().err
    f, _ = open_append(str(path), ["node", "time", "y1"])         # a whole file is left as it is
    f.close()
    assert path.read_text() == "node,time,y1\na,1,2.5\nc,3,4.5\n"
