"""`flash collect` against a broken or hostile device: a batch is what the device says it is only
after the workstation has checked it. The sender computes the checksum, so a consistent lie passes
it: every field of the head and of each row is checked before anything is written."""
import hashlib
import json
import signal

import numpy as np
import pytest

from flash.batch import ROW, CollectError, head_units, parse_batch
from flash.collect import commit

CID = "0123456789abcdef"


def _head(**over) -> dict:
    head = {"version": 1, "capture_id": CID, "first": 1, "nodes": [[1, "kitchen"], [2, "hall"]],
            "models": [[1, "b" * 16, 60.0, json.dumps(["t", "rh"]), "t", 0, 2, json.dumps([0.8]), None]]}
    return {**head, **over}


def _blob(nf=2, h=2, levels=1) -> bytes:
    return np.arange(nf + h + 2 * levels * h, dtype="<f4").tobytes()


def _rows(n=4, start=1):
    return [(start + i, 29_000_000 + i, 1 + i % 2, 1, _blob()) for i in range(n)]


def _wire(head: dict, rows) -> bytes:
    """What READER prints: the head, the rows, the trailer with their count and checksum."""
    body = b"".join(ROW.pack(s, p, n, m, len(v)) + v for s, p, n, m, v in rows)
    trailer = {"rows": len(rows), "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(head).encode() + b"\n" + body + b"\n" + json.dumps(trailer).encode() + b"\n"


def _refused(data: bytes, match: str, after: int = 0, limit: int = 100):
    def hang(*_):
        raise AssertionError("parse_batch did not return within 10 s")
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        with pytest.raises(CollectError, match=match):
            parse_batch(data, "pi@x", after, limit)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_consistent_batch_parses():
    batch = parse_batch(_wire(_head(), _rows()), "pi@x", 0, 100)
    assert [r[0] for r in batch["rows"]] == [1, 2, 3, 4]


def test_a_row_length_that_points_backwards_or_past_the_body_is_refused():
    """A length of -36 moved the parser back onto the same row: collect appended it forever."""
    body = ROW.pack(1, 29_000_000, 1, 1, -ROW.size)
    trailer = {"rows": 1, "sha256": hashlib.sha256(body).hexdigest()}
    data = json.dumps(_head()).encode() + b"\n" + body + b"\n" + json.dumps(trailer).encode() + b"\n"
    _refused(data, r"row 1: .*length")
    short = _wire(_head(), _rows())[:-60]                # cut inside the rows, trailer rebuilt below
    _refused(short, r"cut off|checksum|length")


@pytest.mark.parametrize("rows,after,limit,match", [
    ([(2, 1, 1, 1, _blob()), (2, 2, 1, 1, _blob())], 0, 100, r"seq 2 after 2"),          # not rising
    (_rows(2, start=1), 5, 100, r"seq 1 after 5"),                                      # at or before the mark
    (_rows(5), 0, 4, r"5 rows, more than the 4 asked for"),
    ([(1, 1, 9, 1, _blob())], 0, 100, r"node 9"),                                      # a node the head lacks
    ([(1, 1, 1, 7, _blob())], 0, 100, r"model 7"),
    ([(1, 1, 1, 1, _blob()[:-4])], 0, 100, r"28 bytes"),                               # a blob of another size
    ([(1, 2 ** 62, 1, 1, _blob())], 0, 100, r"period"),                                # a time past 2200
])
def test_rows_that_do_not_follow_the_head_are_refused(rows, after, limit, match):
    _refused(_wire(_head(), rows), match, after, limit)


@pytest.mark.parametrize("over,match", [
    ({"capture_id": ""}, r"capture_id ''"), ({"first": "1"}, r"first '1'"), ({"first": -4}, r"first '-4'"), ({"capture_id": "../../x"}, r"capture_id"), ({"capture_id": None}, r"capture_id"),
    ({"nodes": [[1, "kitchen"], [2, "kitchen"]]}, r"node name 'kitchen' twice"),
    ({"nodes": [[1, ""]]}, r"node id ''"),
    ({"models": [[1, "b" * 16, float("nan"), '["t"]', "t", 0, 2, "[]", None]]}, r"period_s"),
    ({"models": [[1, "b" * 16, 60.0, '["t"]', "t", 0, 10 ** 9, "[]", None]]}, r"horizon"),
    ({"models": [[1, "b" * 16, 60.0, '["forecast_1"]', "t", 0, 2, "[]", None]]}, r"feature 'forecast_1'"),
    ({"models": [[1, "b" * 16, 60.0, '["node"]', "t", 0, 2, "[]", None]]}, r"feature 'node'"),
    ({"models": [[1, "b" * 16, 60.0, '["lo80_1"]', "t", 0, 2, "[0.8]", None]]}, r"feature 'lo80_1'"),
    ({"models": [[1, "b" * 16, 60.0, '["t"]', "t", 0, 2, "[1.5]", None]]}, r"levels"),
    ({"models": [[1, "b" * 16, 60.0, "not json", "t", 0, 2, "[]", None]]}, r"features"),
    ({"models": [[1, "b" * 16, 60.0, '["t"]', "t", 0, 2, "[]", 60.0]]}, r"phase_s 60.0"),
    ({"models": [[1, "b" * 16, 60.0, '["t"]', "t", 0, 2, "[]", "3"]]}, r"phase_s '3'"),
    ({"models": [[1, "b" * 16, 60.0, '["t"]', "t", 0, 2, "[]", float("nan")]]}, r"phase_s nan"),
    ({"models": [[1, "b" * 16, 60.0, '["t"]', "t", 0, 2, "[]"]]}, r"expected \[id, bundle_id"),
])
def test_a_head_that_is_no_capture_head_is_refused(over, match):
    _refused(_wire(_head(**over), [(1, 1, 1, 1, _blob(nf=1, levels=0))]), match)


def test_a_clean_batch_still_commits(tmp_path):
    batch = parse_batch(_wire(_head(), _rows()), "pi@x", 0, 100)
    mark = commit(str(tmp_path), "pi", batch, {"capture_id": None, "seq": 0, "pending": None})
    assert mark == {"capture_id": CID, "seq": 4, "pending": None}
    assert sorted(p.name for p in tmp_path.glob("device=pi/node=*")) == ["node=hall", "node=kitchen"]


def test_score_keeps_node_ids_that_look_like_numbers_apart(tmp_path):
    """node=007 and node=7 were both read as the number 7: two sensors merged into one series."""
    from runtime.score import series_from_dataset
    batch = parse_batch(_wire(_head(nodes=[[1, "007"], [2, "7"]]), _rows()), "pi@x", 0, 100)
    commit(str(tmp_path), "pi", batch, {"capture_id": None, "seq": 0, "pending": None})
    series = series_from_dataset(str(tmp_path))
    assert sorted(series) == ["pi/007", "pi/7"] and all(len(p) == 2 for p, _, _ in series.values())


def test_a_device_that_sends_without_end_is_cut_at_the_byte_cap():
    """collect held everything a device printed in memory: a device that sends without end could
    exhaust the workstation's. Output past the cap ends the read, in one line."""
    import sys
    from flash.collect import read_bounded
    endless = [sys.executable, "-c", "import sys\nwhile True: sys.stdout.buffer.write(b'x' * 65536)"]
    with pytest.raises(CollectError, match=r"sent more than 1000000 bytes"):
        read_bounded(endless, "pi@x", timeout=60, cap=1_000_000)
    out, err, rc = read_bounded([sys.executable, "-c", "print('ok'); import sys; sys.stderr.write('e' * 200000)"],
                                "pi@x", timeout=60, cap=1_000_000)
    assert (out, rc) == (b"ok\n", 0) and len(err) <= 65536


def test_a_device_that_never_finishes_is_one_line():
    import sys
    from flash.collect import read_bounded
    with pytest.raises(CollectError, match=r"did not finish within 1 s"):
        read_bounded([sys.executable, "-c", "import time; time.sleep(30)"], "pi@x", timeout=1, cap=1000)


def test_units_from_a_device_are_kept_only_where_they_are_short_printable_names():
    """A capture keeps its bundles' units (meta `units <bundle id>`) for training on collected data; what
    the device sends is text it controls, and a unit reaches MQTT, Home Assistant and C."""
    head = {"units": {"b1": json.dumps({"T1": "degC", "RH": "%", "x": "a\nb", "y": "u" * 65, "w": "w" * 64, "z": 7,
                                           "bidi": "deg\u202eC", "csi": "\x9b31m", "ls": "a\u2028b"}),
                      "b2": "{not json", "b3": json.dumps(["degC"]), "b4": 3}}
    assert head_units(head) == {"b1": {"T1": "degC", "RH": "%", "w": "w" * 64}}      # as a bundle's check
    assert head_units({}) == {} and head_units({"units": "degC"}) == {}
