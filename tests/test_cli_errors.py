"""Every CLI path ends in a line a person can act on and a status, never a traceback.

Each case runs ``covergw`` as a process, the way a technician's shell does.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from firmware_sim.ptys import PtyPort
from tests.vectors import vector

COVERGW = [sys.executable, "-m", "gateway.cli"]


def covergw(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COVERGW, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input=None if stdin is None else stdin.decode("latin-1"),
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def test_missing_capture_file_is_one_line(tmp_path: Path) -> None:
    result = covergw("decode", "--file", str(tmp_path / "nope.bin"))
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"covergw decode: cannot read {tmp_path / 'nope.bin'}: No such file or directory"
    ]


def test_bad_scenarios_and_speeds_are_refused_before_anything_starts(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[scenario\n", encoding="utf-8")
    for args, says in [
        (["--scenario", "no_such_scenario"], "no scenario 'no_such_scenario'"),
        (["--scenario", str(broken)], "not valid TOML"),
        (["--speed", "0"], "must be above zero"),
        (["--speed", "nan"], "must be above zero"),
        (["--duration", "-5"], "must be above zero"),
        (["--broker", "localhost"], "--broker is HOST:PORT"),
    ]:
        result = covergw("demo", *args)
        no_traceback(result)
        assert result.returncode == 2, args
        assert says in result.stderr, (args, result.stderr)


def test_a_reader_that_goes_away_ends_decode_quietly(tmp_path: Path) -> None:
    capture = tmp_path / "big.bin"
    capture.write_bytes(vector("report") * 20_000)
    proc = subprocess.Popen(
        [*COVERGW, "decode", "--file", str(capture)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert b'"node"' in proc.stdout.readline()  # as ``| head -1`` would
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=60)
    assert b"Traceback" not in stderr, stderr
    assert b"BrokenPipe" not in stderr
    assert proc.returncode == 141


def test_split_hex_gets_a_hint() -> None:
    result = covergw("decode", *vector("report").hex(" ").split())
    no_traceback(result)
    assert "quote the frame" in result.stderr


def test_at_lines_without_the_dialect_get_a_hint(tmp_path: Path) -> None:
    capture = tmp_path / "at.log"
    capture.write_bytes(b"+EVT:RXP2P:-95:7:" + vector("report").hex().upper().encode() + b"\r\n")
    result = covergw("decode", "--file", str(capture))
    no_traceback(result)
    assert "--dialect at" in result.stderr
    with_dialect = covergw("decode", "--file", str(capture), "--dialect", "at")
    assert '"node": "00C0FFEE"' in with_dialect.stdout


async def test_decode_follows_a_live_pty_and_ends_cleanly_when_it_closes() -> None:
    port = PtyPort()
    proc = await asyncio.create_subprocess_exec(
        *COVERGW, "decode", "--file", port.path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    # Written until it is read: the decoder may not have opened the pty yet.
    async with asyncio.timeout(20):
        while True:
            port.write(vector("report"))
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 1.0)
            except TimeoutError:
                continue
            break
    assert b'"node": "00C0FFEE"' in line  # one frame shown at once, not after 64 KiB
    port.close()  # the far side goes away: EIO on the decoder's side
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert b"Traceback" not in stderr, stderr
    assert proc.returncode == 0
    assert b'"summary"' in stderr


def test_every_subcommand_has_an_example_and_config_is_named_one_way(tmp_path: Path) -> None:
    commands = [
        ["decode"], ["run"], ["check-config"], ["status"], ["demo"], ["diag"],
        ["diag", "sniff"], ["diag", "tail"], ["diag", "modbus"],
    ]  # fmt: skip
    for command in commands:
        result = covergw(*command, "--help")
        assert result.returncode == 0, command
        assert "examples:\n  covergw " in result.stdout, command
    config = tmp_path / "gw.toml"
    config.write_text('[gateway]\nid = "gw-1"\nstate_dir = "state"\n', encoding="utf-8")
    new_form = covergw("check-config", "--config", str(config))
    old_form = covergw("check-config", str(config))
    assert (new_form.returncode, old_form.returncode) == (0, 0), new_form.stderr
    assert new_form.stdout == old_form.stdout
    neither = covergw("check-config")
    assert neither.returncode == 2
    assert "--config FILE" in neither.stderr


def test_bus_tool_numbers_are_checked_before_any_port_is_touched() -> None:
    for args, says in [
        (["diag", "modbus", "scan", "--port", "/dev/null", "--baud", "0"], "a baud rate is"),
        (["diag", "modbus", "scan", "--port", "/dev/null", "--timeout", "-1"], "above zero"),
        (["diag", "modbus", "scan", "--port", "/dev/null", "--slaves", "0-300"], "1–247"),
        (["diag", "sniff", "--port", "/dev/null", "--count", "0"], "at least 1"),
        (["diag", "modbus", "scan"], "give --port DEV"),
    ]:
        result = covergw(*args)
        no_traceback(result)
        assert result.returncode == 2, args
        assert says in result.stderr, (args, result.stderr)
