"""Per-device state in its compact forms behaves as the plain forms it replaced.

A city's worth of devices made the engine keep SCN-1 nodes by number, a
device's remembered receptions as one flat tuple, and baselines of a cover's
own node without a set per cover. These tests hold those forms to a plain
model (the dict-of-tuples counters the flat tuple replaced) and to the
round trips through their state rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.edge.baselines import Baselines, _row
from gateway.edge.devices import Deadlines, DeviceState, DeviceTable, from_token, token
from gateway.edge.seqtrack import DUPLICATE_WINDOW_S, MAX_RECENT, CounterState, Verdict
from gateway.edge.state import BASELINE, StateLog, join
from gateway.observation import DeviceRef


@dataclass
class PlainCounters:
    """The counters as they were: (counter, fingerprint) -> when heard, in a dict."""

    last: int | None = None
    recent: dict[tuple[int, int], float] = field(default_factory=dict)

    def observe(
        self,
        counter: int | None,
        fp: int,
        at: float,
        *,
        restart: bool,
        by_message_id: bool,
        modulus: int = 1 << 16,
    ) -> Verdict:
        while self.recent and (
            len(self.recent) >= MAX_RECENT
            or at - next(iter(self.recent.values())) > DUPLICATE_WINDOW_S
        ):
            del self.recent[next(iter(self.recent))]
        if restart:
            self.recent.clear()
        key = (-1 if counter is None else counter, fp)
        if by_message_id:
            if any(f == fp for _, f in self.recent):
                return Verdict(duplicate=True, lost=0)
        elif counter is not None and key in self.recent:
            return Verdict(duplicate=True, lost=0)
        anomaly = counter is not None and any(c == counter for c, _ in self.recent)
        lost = 0
        if counter is not None:
            half = modulus // 2
            if self.last is not None and not restart and not anomaly:
                gap = (counter - self.last - 1) % modulus
                if gap < half:
                    lost = gap
            if (
                restart
                or self.last is None
                or (not anomaly and (counter - self.last) % modulus < half)
            ):
                self.last = counter
        self.recent[key] = at
        return Verdict(duplicate=False, lost=lost, anomaly=anomaly)


reception = st.tuples(
    st.sampled_from([1, 1, 1, 0, -1, 2, 40, 32768]),  # counter step: mostly the next one
    st.integers(0, 3),  # fingerprint
    # seconds since the last reception: bursts fill the 16 remembered, gaps cross 600 s
    st.one_of(st.sampled_from([0.0, 1.0, 599.0, 600.0, 601.0]), st.floats(0, 700)),
    st.booleans(),  # restart (boot, rejoin)
    st.booleans(),  # the transport's message id decides
)
# Short runs, and runs longer than the 16 receptions a device remembers.
receptions = st.one_of(
    st.lists(reception, max_size=8), st.lists(reception, min_size=MAX_RECENT + 2, max_size=60)
)


@settings(max_examples=300)
@given(receptions)
def test_flat_counters_judge_as_the_plain_model(
    steps: list[tuple[int, int, float, bool, bool]],
) -> None:
    flat, plain = CounterState(), PlainCounters()
    at, counter = 1_700_000_000.0, 0
    for step, fp, gap, restart, by_id in steps:
        at += gap
        counter = (counter + step) % (1 << 16)
        number = None if by_id and counter % 5 == 0 else counter
        got = flat.observe(number, fp, at, restart=restart, by_message_id=by_id)
        want = plain.observe(number, fp, at, restart=restart, by_message_id=by_id)
        assert got == want
        assert flat.last == plain.last
        assert [(c, f) for c, f, _ in flat.pairs()] == list(plain.recent)


@given(receptions)
def test_a_device_row_round_trip_keeps_its_verdicts(
    steps: list[tuple[int, int, float, bool, bool]],
) -> None:
    state = DeviceState(last_seen=5.0, bound_input="lora0")
    at, counter = 1_700_000_000.0, 0
    for step, fp, gap, restart, _ in steps:
        at += gap
        counter = (counter + step) % (1 << 16)
        state.counters.observe(counter, fp, at, restart=restart)
    again = DeviceState.from_json(state.to_json())
    assert again.to_json() == state.to_json()
    for counter in {*range(41), *(c for c, _, _ in state.pairs())}:
        for fp in range(4):
            assert again.seen(counter, fp) == state.seen(counter, fp)
            assert again.seen(None, fp, by_message_id=True) == state.seen(
                None, fp, by_message_id=True
            )


def test_scn1_nodes_are_kept_by_number_others_by_ref() -> None:
    node = DeviceRef("scn1", "00C0FFEE")
    assert token(node) == 0x00C0FFEE
    assert from_token(0x00C0FFEE) == node
    for other in (
        DeviceRef("scn1", "00c0ffee"),  # not as the radio names it: kept as it came
        DeviceRef("scn1", "C0FFEE"),
        DeviceRef("scn1", "nothex!!"),
        DeviceRef("em310-tilt", "24e124710b123456"),
    ):
        assert token(other) is other
        assert from_token(token(other)) == other


def test_the_table_finds_a_registered_node_by_number_or_ref() -> None:
    table = DeviceTable(unregistered_limit=2)
    node = DeviceRef("scn1", "00000042")
    state, forgotten = table.touch(0x42, registered=True)
    assert forgotten == []
    assert table.get(node) is state
    assert table.touch(node, registered=True)[0] is state
    assert table.items() == [(node, state)]
    # Out of the registry: the same state moves to the strangers' LRU, under its ref.
    assert table.regroup(lambda d: False) == []
    assert list(table.unregistered) == [node]
    assert table.get(0x42) is state


def test_deadlines_of_nodes_and_other_devices_fall_due_together() -> None:
    deadlines = Deadlines()
    eui = DeviceRef("em310-tilt", "24e124710b123456")
    odd = DeviceRef("scn1", "00c0ffee")  # a non-canonical id: kept by ref
    at = 1_700_000_000.0
    for device in (DeviceRef("scn1", "00000002"), 0x00000001, eui, odd, 0x00000002):
        deadlines.watch(device, at)  # the same deadline: ties must order, never raise
    assert len(deadlines) == 4  # node 2 once, by ref and by number
    assert deadlines.due(at - 1) == []
    due = deadlines.due(at)
    assert due[:2] == [DeviceRef("scn1", "00000001"), DeviceRef("scn1", "00000002")]
    assert set(due[2:]) == {eui, odd}
    assert len(deadlines) == 0
    deadlines.watch(eui, at + 10)
    assert deadlines.due(at + 10) == [eui]


def test_baselines_of_a_cover_and_of_its_other_sensors_rezero_together() -> None:
    log = StateLog()
    baselines = Baselines(log)
    baselines.relative_tilt("HZ-1", "", None, (1.0, 2.0), may_record=True)
    baselines.relative_tilt("HZ-1", "24e124710b123456", None, (3.0, 4.0), may_record=True)
    baselines.relative_tilt("HZ-2", "", None, (5.0, 6.0), may_record=True)
    assert baselines.snapshot() == {
        "HZ-1|": [1.0, 2.0],
        "HZ-1|24e124710b123456": [3.0, 4.0],
        "HZ-2|": [5.0, 6.0],
    }
    written = log.take()
    assert set(written) == {
        "engine/b/HZ-1|",
        "engine/b/HZ-1|24e124710b123456",
        "engine/b/HZ-2|",
    }
    baselines.rezero("HZ-1")
    assert log.take() == {"engine/b/HZ-1|": None, "engine/b/HZ-1|24e124710b123456": None}
    assert baselines.snapshot() == {"HZ-2|": [5.0, 6.0]}
    again = Baselines(StateLog())
    again.load("HZ-2|", [5.0, 6.0])
    again.load("HZ-3|x", [7.0, 8.0])
    assert again.snapshot() == {"HZ-2|": [5.0, 6.0], "HZ-3|x": [7.0, 8.0]}


class _Row:
    def __init__(self, value: int) -> None:
        self.value = value

    def to_json(self) -> int:
        return self.value


state_ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "put_live", "delete", "take"]),
        st.sampled_from(["a", "b", "c"]),
        st.booleans(),  # claimed new (kept only when the claim is true)
    ),
    max_size=60,
)


@given(state_ops)
def test_rows_known_not_stored_leave_the_store_as_it_would_be(
    ops: list[tuple[str, str, bool]],
) -> None:
    """``new`` rows deleted before a commit write nothing, and the store ends up the same.

    A caller may say ``new`` only when no row is stored unless a change to it
    is pending (a device state or baseline made now); the model keeps the test
    to that promise, as the engine keeps it.
    """
    log, plain = StateLog(), StateLog()  # ``plain`` is never told ``new``
    store: dict[str, str] = {}
    plain_store: dict[str, str] = {}
    pending: set[str] = set()
    for n, (op, key, claimed) in enumerate(ops):
        new = claimed and (key not in store or key in pending)
        if op == "take":
            changes, plain_changes = log.take(), plain.take()
            assert set(changes) <= set(plain_changes)
            for rows, taken in ((store, changes), (plain_store, plain_changes)):
                for k, v in taken.items():
                    if v is None:
                        rows.pop(k, None)
                    else:
                        rows[k] = v
            assert store == plain_store
            pending.clear()
            continue
        pending.add(key)
        if op == "put":
            log.put(key, n, new=new)
            plain.put(key, n)
        elif op == "put_live":
            log.put_live(key, _Row(n), new=new)
            plain.put_live(key, _Row(n))
        else:
            log.delete(key)
            plain.delete(key)
    for rows, taken in ((store, log.take()), (plain_store, plain.take())):
        for k, v in taken.items():
            if v is None:
                rows.pop(k, None)
            else:
                rows[k] = v
    assert store == plain_store


def test_a_row_made_and_deleted_between_commits_is_never_written() -> None:
    log = StateLog()
    log.put_live("d/1", _Row(1), new=True)
    log.put("b/1", [0.5, 0.5], new=True)
    log.delete("d/1", urgent=False)
    log.delete("b/1", urgent=False)
    assert log.take() == {}
    log.put_live("d/1", _Row(1), new=True)
    assert log.take() == {"d/1": "1"}
    log.delete("d/1")  # stored: its deletion is written...
    log.put_live("d/1", _Row(2), new=True)  # ...and a new one, while it is pending,
    log.delete("d/1")  # does not cancel it
    assert log.take() == {"d/1": None}


@given(st.text(), st.text())
def test_a_baseline_row_key_is_its_joined_key(subject_key: str, sub: str) -> None:
    assert _row(subject_key, sub) == BASELINE + join(subject_key, sub)


@given(receptions, st.none() | st.floats(0, 2e9), st.none() | st.sampled_from(["lora0", "at"]))
def test_a_device_row_is_its_fields_then_its_counters_rows(
    steps: list[tuple[int, int, float, bool, bool]], seen: float | None, bound: str | None
) -> None:
    state = DeviceState(last_seen=seen, bound_input=bound)
    at, counter = 1_700_000_000, 0  # an int time: the row still says a float
    for step, fp, gap, restart, by_id in steps:
        at += int(gap)
        counter = (counter + step) % (1 << 16)
        state.counters.observe(counter, fp, at, restart=restart, by_message_id=by_id)
    counters = {"last": state.last, "recent": [list(p) for p in state.pairs()]}
    assert CounterState.to_json(state) == counters
    assert json.dumps(state.to_json()) == json.dumps({"seen": seen, "input": bound, **counters})
