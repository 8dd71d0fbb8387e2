"""The command handler against a real gateway and a real on-disk queue (no broker: fast).

Every answer is checked against ``response.schema.json``; every queued
message against its topic's schema. The broker-level round trips are in
``test_commands.py`` and ``tests/hostile/test_commands.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.commands import Delivery, recover_request_id, too_deep
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.edge.engine import iso
from gateway.events import FrameHeard
from gateway.protocol.framing import Received
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType, Tilt
from tests.harness import VALIDATORS

REGISTRY = "cover_id,owner_unit,cover_kind,node_id,address\nC-1,drainage,rain,00C0FFEE,西湖区\n"
NOW = 1.8e9
COMMANDS = [
    "ping",
    "status",
    "set_thresholds",
    "clear_thresholds",
    "maintenance",
    "rezero",
    "reload",
    "frames",
    "ack_alarm",
    "active_alarms",
]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def write_config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "covers.csv").write_text(REGISTRY, encoding="utf-8")
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nid = "gw-h"\nstate_dir = "{tmp_path}/s"\nregistry = "{tmp_path}/covers.csv"\n'
        + extra,
        encoding="utf-8",
    )
    return config


@contextmanager
def gateway(tmp_path: Path, extra: str = "", clock: Clock | None = None) -> Iterator[Gateway]:
    """A gateway that is not running: its engine, queue and command handler, for real."""
    config = write_config(tmp_path, extra) if not (tmp_path / "gw.toml").exists() else None
    path = config or tmp_path / "gw.toml"
    gw = Gateway(load_config(path), config_path=path, clock=clock or Clock())
    with gw.queue:
        saved = gw.queue.get_state("engine")
        if saved:
            gw.engine.restore(json.loads(saved))
        gw.commands.restore()
        yield gw
        gw.queue.put_many([], state={"engine": json.dumps(gw.engine.snapshot())})


def ask(gw: Gateway, request: dict[str, Any] | bytes, delivery: Delivery | None = None) -> Any:
    payload = request if isinstance(request, bytes) else json.dumps(request).encode()
    raw = gw.commands.handle(payload, delivery)
    assert raw is not None
    answer = json.loads(raw)
    assert list(VALIDATORS["response"].iter_errors(answer)) == [], answer
    return answer


def pong(gw: Gateway) -> None:
    answer = ask(gw, {"request_id": "ping", "cmd": "ping"})
    assert answer["result"] == {"pong": True}


def queued(gw: Gateway, suffix: str) -> list[dict[str, Any]]:
    out = []
    for row in gw.queue.peek(1000):
        if row.message.topic.endswith(suffix):
            body = json.loads(row.message.payload)
            kind = suffix.rsplit("/", 1)[-1]
            assert list(VALIDATORS[kind].iter_errors(body)) == [], body
            out.append(body)
    return out


def opened(at: float = NOW) -> FrameHeard:
    frame = Frame(
        0x00C0FFEE,
        9,
        MessageType.EVENT,
        FrameFlags.NODE_ALARM,
        (Event(EventCode.COVER_OPENED, 0, 0), Tilt(40, 0)),
    )
    return FrameHeard("lora0", at, Received(frame, bytes.fromhex("A55A")))


def test_the_four_requests_that_ended_command_handling_are_answered(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        frames = ask(
            gw, {"request_id": "f", "cmd": "frames", "args": {"node": "00C0FFEE", "last": 5.0}}
        )
        assert (frames["ok"], frames["result"]["frames"]) == (True, [])
        pong(gw)
        for until in ("2026-13-45T00:00:00.000Z", "2026-13-45T00:00:00Z"):
            bad = ask(
                gw,
                {
                    "request_id": until,
                    "cmd": "maintenance",
                    "args": {"cover_id": "C-1", "on": True, "until": until},
                },
            )
            assert bad["error"]["code"] == "invalid"
            assert "until" in bad["error"]["message"]
            pong(gw)
        deep = b'{"request_id":"deep","cmd":"ping","args":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        answer = ask(gw, deep)
        assert (answer["error"]["code"], answer["request_id"]) == ("invalid", "deep")
        pong(gw)
        small_but_deep = (
            b'{"request_id":"d2","cmd":"ping","args":' + b"[" * 20_000 + b"]" * 20_000 + b"}"
        )
        answer = ask(gw, small_but_deep)
        assert "nests deeper" in answer["error"]["message"]
        pong(gw)
        (tmp_path / "covers.csv").write_bytes(REGISTRY.encode("gbk"))
        reload = ask(gw, {"request_id": "r", "cmd": "reload"})
        assert reload["error"]["code"] == "refused"
        pong(gw)
        assert gw.engine.registry.covers["C-1"].address == "西湖区"  # the old registry stays


def test_depth_counts_brackets_outside_strings_only() -> None:
    assert not too_deep(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[\\"[[[["}', 4)
    assert too_deep(b"[[[[[1]]]]]", 4)
    assert not too_deep(b"[[[[1]]]]", 4)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e9", "-1", "0"])
def test_thresholds_must_be_finite_and_in_range(tmp_path: Path, value: str) -> None:
    with gateway(tmp_path) as gw:
        cover = gw.engine.registry.covers["C-1"]
        before = gw.engine.thresholds(cover)
        for key in ("tilt_deg", "offline_after_s", "gas_CH4"):
            args = f'{{"cover_id": "C-1", "thresholds": {{"{key}": {value}}}}}'
            raw = f'{{"request_id": "t-{key}", "cmd": "set_thresholds", "args": {args}}}'.encode()
            answer = ask(gw, raw)
            assert answer["error"]["code"] == "invalid", answer
        assert gw.engine.thresholds(cover) == before
        assert gw.commands.overrides()["cover"] == {}


def test_thresholds_that_contradict_each_other_are_refused(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        answer = ask(
            gw,
            {
                "request_id": "x",
                "cmd": "set_thresholds",
                "args": {
                    "cover_id": "C-1",
                    "thresholds": {"low_battery_mv": 3500, "low_battery_clear_mv": 3400},
                },
            },
        )
        assert answer["error"]["code"] == "refused"
        unknown_kind = ask(
            gw,
            {
                "request_id": "k",
                "cmd": "set_thresholds",
                "args": {"cover_kind": "nope", "thresholds": {"tilt_deg": 9}},
            },
        )
        assert unknown_kind["error"]["code"] == "not_found"


def test_overrides_are_visible_audited_and_removable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with gateway(tmp_path) as gw:
        cover = gw.engine.registry.covers["C-1"]
        caplog.set_level("INFO", logger="gateway.audit")
        ok = ask(
            gw,
            {
                "request_id": "s1",
                "cmd": "set_thresholds",
                "args": {"cover_id": "C-1", "thresholds": {"tilt_deg": 7.5}},
            },
        )
        assert ok["result"]["now"] == {"tilt_deg": 7.5}
        assert gw.engine.thresholds(cover).tilt_deg == 7.5
        kind = ask(
            gw,
            {
                "request_id": "s2",
                "cmd": "set_thresholds",
                "args": {"cover_kind": "rain", "thresholds": {"hold_s": 5}},
            },
        )
        assert kind["ok"]
        expected = {
            "cover": {"C-1": {"tilt_deg": 7.5}},
            "cover_kind": {"rain": {"hold_s": 5}},
            "maintenance": {},
        }
        assert gw.commands.overrides() == expected
        assert gw.local_status()["overrides"] == expected
        stats = gw.stats_payload()
        assert stats["commands"]["overrides"] == expected
        assert list(VALIDATORS["stats"].iter_errors(stats)) == []
        retained = json.loads(gw.commands.overrides_message())
        assert list(VALIDATORS["overrides"].iter_errors(retained)) == []
        assert gw.commands.changed.is_set()
        events = queued(gw, "/event")
        assert [(e["event"], e["old"], e["new"]) for e in events] == [
            ("thresholds_set", {}, {"tilt_deg": 7.5}),
            ("thresholds_set", {}, {"hold_s": 5}),
        ]
        assert any("thresholds_set for cover C-1" in r.getMessage() for r in caplog.records)

        cleared = ask(
            gw, {"request_id": "c1", "cmd": "clear_thresholds", "args": {"cover_id": "C-1"}}
        )
        assert (cleared["result"]["cleared"], cleared["result"]["now"]) == (["tilt_deg"], {})
        assert gw.engine.thresholds(cover).tilt_deg == 15.0
        again = ask(
            gw,
            {
                "request_id": "c2",
                "cmd": "clear_thresholds",
                "args": {"cover_kind": "rain", "keys": ["hold_s"]},
            },
        )
        assert again["result"]["cleared"] == ["hold_s"]
        assert gw.commands.overrides() == {"cover": {}, "cover_kind": {}, "maintenance": {}}
        assert [e["event"] for e in queued(gw, "/event")][-2:] == ["thresholds_cleared"] * 2


def test_maintenance_has_a_maximum_window(tmp_path: Path) -> None:
    clock = Clock()
    with gateway(tmp_path, "[commands]\nmaintenance_max_s = 3600\n", clock) as gw:

        def maint(rid: str, **args: Any) -> Any:
            return ask(
                gw, {"request_id": rid, "cmd": "maintenance", "args": {"cover_id": "C-1", **args}}
            )

        past = maint("m1", on=True, until=iso(NOW - 1))
        assert (past["error"]["code"], past["error"]["message"]) == (
            "refused",
            "until is in the past",
        )
        far = maint("m2", on=True, until=iso(NOW + 7200))
        assert far["error"]["code"] == "refused"
        default = maint("m3", on=True)
        assert default["result"]["until"] == iso(NOW + 3600)
        assert gw.commands.overrides()["maintenance"] == {"C-1": iso(NOW + 3600)}
        clock.now += 3601
        assert gw.commands.overrides()["maintenance"] == {}
        assert not gw.engine.in_maintenance(gw.engine.registry.covers["C-1"], clock.now)
        assert [e["event"] for e in queued(gw, "/event")] == ["maintenance_set"]


def test_request_ids_survive_a_restart_and_a_reuse_is_a_conflict(tmp_path: Path) -> None:
    request = {
        "request_id": "once",
        "cmd": "set_thresholds",
        "args": {"cover_id": "C-1", "thresholds": {"tilt_deg": 9}},
    }
    with gateway(tmp_path) as gw:
        first = ask(gw, request)
        assert first["ok"]
    with gateway(tmp_path) as gw:
        assert ask(gw, request) == first
        assert gw.commands.stats.repeated == 1
        assert len(queued(gw, "/event")) == 1  # not carried out twice
        other = ask(gw, {"request_id": "once", "cmd": "ping"})
        assert other["error"]["code"] == "conflict"


def test_remembered_request_ids_are_bounded_on_disk(tmp_path: Path) -> None:
    with gateway(tmp_path, "[commands]\nremember_requests = 3\nburst = 100\n") as gw:
        for n in range(10):
            ask(gw, {"request_id": f"p{n}", "cmd": "ping"})
        assert [k for k, _ in gw.queue.state_items("cmd.req.")] == [
            "cmd.req.p7",
            "cmd.req.p8",
            "cmd.req.p9",
        ]


def test_expired_commands_are_answered_and_not_carried_out(tmp_path: Path) -> None:
    clock = Clock()
    with gateway(tmp_path, "[commands]\nlifetime_s = 60\n", clock) as gw:
        args = {"cover_id": "C-1", "thresholds": {"tilt_deg": 9}}
        stale = ask(
            gw,
            {"request_id": "e1", "cmd": "set_thresholds", "args": args, "sent_at": iso(NOW - 61)},
        )
        assert stale["error"]["code"] == "expired"
        late = ask(
            gw,
            {"request_id": "e2", "cmd": "set_thresholds", "args": args, "expires_at": iso(NOW - 1)},
        )
        assert late["error"]["code"] == "expired"
        mqtt = ask(
            gw,
            {"request_id": "e3", "cmd": "set_thresholds", "args": args},
            Delivery(expires_at=NOW - 1),
        )
        assert mqtt["error"]["code"] == "expired"
        assert gw.commands.overrides()["cover"] == {}
        fresh = ask(
            gw,
            {"request_id": "e4", "cmd": "set_thresholds", "args": args, "sent_at": iso(NOW - 30)},
        )
        assert fresh["ok"]
        assert gw.commands.stats.expired == 3
        future = ask(gw, {"request_id": "e5", "cmd": "ping", "sent_at": iso(NOW + 3600)})
        assert future["error"]["code"] == "refused"


def test_over_the_rate_limit_is_busy_then_dropped(tmp_path: Path) -> None:
    with gateway(tmp_path, "[commands]\nburst = 5\nrate_per_s = 0.1\n") as gw:
        answers = [
            gw.commands.handle(json.dumps({"request_id": f"b{n}", "cmd": "ping"}).encode())
            for n in range(15)
        ]
        codes = [None if a is None else json.loads(a).get("error", {}).get("code") for a in answers]
        assert codes == [None] * 5 + ["busy"] * 5 + [None] * 5
        assert all(a is None for a in answers[10:])
        stats = gw.commands.stats
        assert (stats.busy, stats.dropped, stats.carried_out) == (5, 5, 5)
        assert json.loads(answers[5] or b"{}")["request_id"] == "b5"


def test_unparsable_requests_name_the_reason_and_recover_the_id(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        garbage = ask(gw, b'{"request_id": "g1", "cmd": "ping", oops}')
        assert (garbage["request_id"], garbage["error"]["code"]) == ("g1", "invalid")
        assert garbage["error"]["message"].startswith("not JSON")
        assert ask(gw, b"\xff\xfe")["request_id"] is None
        assert ask(gw, b"[1, 2]")["error"]["message"] == "a request is a JSON object"
        foreign = ask(gw, {"request_id": "f1", "cmd": "ping"}, Delivery(foreign_reply_topic="x/y"))
        assert foreign["error"]["code"] == "refused"


def test_a_secret_never_appears_in_an_answer(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with gateway(tmp_path) as gw:
        config.write_text(config.read_text() + "[uplink]\npassword = 98765\n", encoding="utf-8")
        answer = ask(gw, {"request_id": "r", "cmd": "reload"})
        assert answer["error"]["code"] == "refused"
        assert "uplink.password" in answer["error"]["message"]
        assert "98765" not in json.dumps(answer)


def test_ack_alarm_reported_kept_until_cleared_and_not_repeated(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        gw.engine.handle(opened())
        (alarm,) = gw.engine.active_alarms()
        request = {
            "request_id": "a1",
            "cmd": "ack_alarm",
            "args": {"alarm_id": alarm["alarm_id"], "by": "王工", "work_order": "WO-7"},
        }
        ack = ask(gw, request)
        assert ack["result"]["acknowledged"]["by"] == "王工"
        (message,) = queued(gw, "/alarm")
        assert (message["state"], message["alarm_id"], message["work_order"]) == (
            "acknowledged",
            alarm["alarm_id"],
            "WO-7",
        )
        assert message["cover"]["cover_id"] == "C-1"
        status = gw.local_status()
        assert status["active_alarms"] == []
        assert [a["alarm_id"] for a in status["acknowledged_alarms"]] == [alarm["alarm_id"]]
        listed = ask(gw, {"request_id": "l1", "cmd": "active_alarms"})
        assert listed["result"]["alarms"][0]["acknowledged"]["work_order"] == "WO-7"
        twice = ask(gw, {**request, "request_id": "a2"})
        assert twice["error"]["code"] == "refused"
        missing = ask(
            gw, {"request_id": "a3", "cmd": "ack_alarm", "args": {"alarm_id": "nope", "by": "x"}}
        )
        assert missing["error"]["code"] == "not_found"
    with gateway(tmp_path) as gw:  # kept across a restart, while the alarm is active
        assert gw.local_status()["acknowledged_alarms"][0]["acknowledged"]["by"] == "王工"
        closed = Frame(
            0x00C0FFEE,
            10,
            MessageType.EVENT,
            FrameFlags(0),
            (Event(EventCode.COVER_CLOSED, 0, 0), Tilt(0, 0)),
        )
        gw.engine.handle(FrameHeard("lora0", NOW + 5, Received(closed, b"")))
        assert gw.local_status()["acknowledged_alarms"] == []
        pong(gw)  # the next commit deletes the acknowledgement's row
        assert list(gw.queue.state_items("cmd.ack.")) == []


def test_status_and_console_path_answers_match_their_schemas(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw:
        gw.engine.handle(opened())
        status = ask(gw, {"request_id": "s", "cmd": "status"})
        assert status["result"]["active_alarms"][0]["kind"] == "cover_open"
        console = gw.run_command(
            {"request_id": "console-1", "cmd": "rezero", "args": {"cover_id": "C-1"}}
        )
        assert console["ok"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
requests = st.fixed_dictionaries(
    {
        "request_id": st.text(min_size=1, max_size=10) | json_values,
        "cmd": st.sampled_from(COMMANDS) | json_values,
    },
    optional={
        "args": st.dictionaries(
            st.sampled_from(
                [
                    "cover_id",
                    "cover_kind",
                    "thresholds",
                    "on",
                    "until",
                    "node",
                    "last",
                    "alarm_id",
                    "by",
                    "keys",
                ]
            )
            | st.text(max_size=8),
            json_values | st.sampled_from(["C-1", "rain", "00C0FFEE", True, 5.0]),
            max_size=4,
        ),
        "expires_at": json_values,
        "sent_at": st.sampled_from([iso(NOW), "2026-02-30T00:00:00.000Z"]) | json_values,
        "extra": json_values,
    },
)


def test_fuzz_any_request_is_answered_and_ping_still_works(tmp_path: Path) -> None:
    write_config(tmp_path, "[commands]\nburst = 10000\nrate_per_s = 1000\n")
    with gateway(tmp_path) as gw:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(request=requests | json_values | st.binary(max_size=200))
        def one(request: Any) -> None:
            payload = request if isinstance(request, bytes) else json.dumps(request).encode()
            answer = ask(gw, payload)
            assert answer["ok"] or answer["error"]["code"] in {
                "invalid",
                "not_found",
                "refused",
                "expired",
                "conflict",
            }
            pong(gw)

        one()
        assert gw.commands.stats.internal == 0


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=json_values, limit=st.integers(1, 6))
def test_depth_without_parsing_agrees_with_the_parsed_depth(value: Any, limit: int) -> None:
    assert too_deep(json.dumps(value).encode(), limit) == (_depth(value) > limit)


@settings(max_examples=300, deadline=None)
@given(request_id=st.text(min_size=1, max_size=128), tail=st.binary(max_size=50))
def test_a_request_id_is_recovered_from_a_broken_request(request_id: str, tail: bytes) -> None:
    raw = json.dumps({"request_id": request_id}).encode()[:-1] + b', "cmd": ' + tail
    assert recover_request_id(raw) == request_id


def test_overrides_saved_by_an_older_gateway_are_cut_back_to_the_ranges(tmp_path: Path) -> None:
    """An old queue may hold what the old gateway accepted: NaN, 1e9, maintenance forever."""
    with gateway(tmp_path) as gw:
        gw.engine.cover_overrides["C-1"] = {"tilt_deg": float("nan"), "hold_s": 5}
        gw.engine.kind_overrides["rain"] = {"offline_after_s": 1e9}
        gw.engine.maintenance_until["C-1"] = float("inf")
    with gateway(tmp_path) as gw:
        assert gw.commands.overrides() == {
            "cover": {"C-1": {"hold_s": 5}},
            "cover_kind": {},
            "maintenance": {"C-1": iso(NOW + 72 * 3600)},
        }
        cover = gw.engine.registry.covers["C-1"]
        assert gw.engine.thresholds(cover).offline_after_s == 2700.0
