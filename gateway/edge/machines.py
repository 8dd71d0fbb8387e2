"""The alarm machines of every subject, with the index of active ones and their rows.

Only machines away from their normal state are kept (a normal one holds
nothing worth memory) and persisted, one row each; the active ones are
indexed so counting them does not walk every cover.
"""

from __future__ import annotations

from typing import Any

from gateway.edge import state
from gateway.edge.alarm import AlarmKind, AlarmMachine, AlarmState
from gateway.edge.state import StateLog

MachineKey = tuple[AlarmKind, str]  # kind, sub


def row_key(subject_key: str, kind: AlarmKind, sub: str) -> str:
    return state.join(subject_key, kind.value, sub)


class AlarmBook:
    def __init__(self, log: StateLog) -> None:
        self._log = log
        self._machines: dict[str, dict[MachineKey, AlarmMachine]] = {}
        self._active: set[tuple[str, AlarmKind, str]] = set()

    def get(self, subject_key: str, kind: AlarmKind, sub: str) -> AlarmMachine | None:
        return self._machines.get(subject_key, {}).get((kind, sub))

    def has(self, subject_key: str, kind: AlarmKind, sub: str) -> bool:
        """Whether the subject has this machine (only those away from normal are kept)."""
        machines = self._machines.get(subject_key)
        return machines is not None and (kind, sub) in machines

    def any_kept(self, subject_key: str) -> bool:
        """Whether the subject has any machine (only those away from normal are kept)."""
        return subject_key in self._machines

    def active(self, subject_key: str, kind: AlarmKind, sub: str) -> bool:
        return (subject_key, kind, sub) in self._active

    def any_active(self, subject_key: str) -> bool:
        machines = self._machines.get(subject_key)
        return machines is not None and any(m.active for m in machines.values())

    def machine(self, subject_key: str, kind: AlarmKind, sub: str) -> AlarmMachine:
        machines = self._machines.setdefault(subject_key, {})
        machine = machines.get((kind, sub))
        if machine is None:
            machine = machines[(kind, sub)] = AlarmMachine()
        return machine

    def settle(
        self, subject_key: str, kind: AlarmKind, sub: str, machine: AlarmMachine, *, changed: bool
    ) -> None:
        """After a machine was used: its row if it changed, the index, memory."""
        if changed:
            key = state.MACHINE + row_key(subject_key, kind, sub)
            if machine.state is AlarmState.NORMAL:
                self._log.delete(key)
            else:
                self._log.put(key, machine.to_json())
        if machine.active:
            self._active.add((subject_key, kind, sub))
        else:
            self._active.discard((subject_key, kind, sub))
        if machine.state is AlarmState.NORMAL:
            machines = self._machines.get(subject_key)
            if machines is not None:
                machines.pop((kind, sub), None)
                if not machines:
                    del self._machines[subject_key]

    def forget(self, subject_key: str) -> None:
        """A subject no longer tracked: its machines and rows go (with the next commit)."""
        machines = self._machines.pop(subject_key, None)
        if machines is None:
            return  # nearly every subject: only machines away from normal are kept
        for (kind, sub), machine in machines.items():
            self._active.discard((subject_key, kind, sub))
            if machine.state is not AlarmState.NORMAL:
                self._log.delete(state.MACHINE + row_key(subject_key, kind, sub), urgent=False)

    def load(self, key: str, value: Any, *, save: bool = False) -> None:
        """One machine from its row key (without prefix) and value."""
        subject_key, kind_text, sub = state.split(key)
        kind = AlarmKind(kind_text)
        machine = AlarmMachine.from_json(value)
        self._machines.setdefault(subject_key, {})[(kind, sub)] = machine
        if machine.active:
            self._active.add((subject_key, kind, sub))
        if save:
            self.settle(subject_key, kind, sub, machine, changed=True)

    def active_items(self) -> list[tuple[str, AlarmKind, str, AlarmMachine]]:
        return [(s, k, sub, self._machines[s][(k, sub)]) for s, k, sub in sorted(self._active)]

    def __len__(self) -> int:
        return len(self._active)

    def snapshot(self) -> dict[str, Any]:
        return {
            row_key(s, k, sub): m.to_json()
            for s, machines in self._machines.items()
            for (k, sub), m in machines.items()
            if m.state is not AlarmState.NORMAL
        }
