"""The daemon imports what its configuration uses: a radio-only gateway carries no
pymodbus, Prometheus, jsonschema, LoRaWAN codecs or construct (SCN-1 decodes with
layouts generated from its construct definitions) (idle memory, docs/performance.md).

The real daemon runs (``covergw run`` as a process, a pty for its radio, a
Mosquitto of its own) under ``-X importtime``, which names every module as it
is imported; it is stopped once systemd's READY=1 says it is serving.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_sim.broker import Broker, free_port
from firmware_sim.ptys import PtyPort
from gateway.cli import _Help, _RawHelp
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType, Tilt

# Only when the configuration has them (or a command or tool needs them).
NOT_FOR_A_RADIO = (
    "pymodbus",
    "prometheus_client",
    "jsonschema",
    "gateway.console",
    "gateway.drivers.modbus",
    "gateway.drivers.lorawan",
    "gateway.drivers.udp",
    "gateway.drivers.tcp",
    "gateway.metrics",
    "gateway.protocol.devices",
    "gateway.tools.busscan",
    "gateway.protocol.modbus_profiles",  # the config reads profiles only with a bus
    "gateway.cover_records",  # retained cover records: compact encodings only
    "construct",  # SCN-1 decodes with gateway.protocol.scn1_layouts
    "gateway.protocol.scn1_schema",
    "difflib",  # "did you mean" for a misspelt key
    "importlib.resources",  # the command schemas, read at the first command
    "http.client",  # paho's urllib.request, deferred by gateway/__init__.py
    "shutil",  # argparse's formatter asks it the width unless told (gateway.cli._Help)
    "secrets",  # message id prefixes come from os.urandom (gateway.edge.render)
    "_ssl",  # asyncio's, aiomqtt's and paho's ssl without TLS, deferred by gateway/__init__.py
    "_hashlib",  # OpenSSL's digests: paho's hashlib is deferred, ours are gateway.digests
)


def imported_by_daemon(
    tmp_path: Path, extra: str = "", traffic: Callable[[PtyPort, Broker], None] | None = None
) -> set[str]:
    """Every module the daemon imported from start until it was serving (and had
    carried TRAFFIC, when given) and stopped."""
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    registry = tmp_path / "covers.csv"
    registry.write_text("cover_id,owner_unit,node_id\nHZ-1,drainage,00C0FFEE\n", encoding="utf-8")
    radio = PtyPort()
    with Broker(tmp_path / "broker") as broker:
        config = tmp_path / "gw.toml"
        config.write_text(
            f'[gateway]\nid = "gw-lazy"\nstate_dir = "{tmp_path}/state"\n'
            f'registry = "{registry}"\n'
            f'[uplink]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f'[[radio]]\nname = "lora0"\nport = "{radio.path}"\nbaudrate = 115200\n' + extra,
            encoding="utf-8",
        )
        daemon = [sys.executable, "-X", "importtime", "-m", "gateway.cli", "run"]
        proc = subprocess.Popen(
            [*daemon, "--config", str(config)],
            env={
                "NOTIFY_SOCKET": str(notify),
                "PATH": "/usr/bin:/bin",
                "PYTHONDONTWRITEBYTECODE": "1",
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            sock.settimeout(30)
            while sock.recv(4096) != b"READY=1":
                pass
            if traffic is not None:
                traffic(radio, broker)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=20)
        finally:
            proc.kill()
            radio.close()
            sock.close()
    assert proc.returncode == 0, stderr[-2000:]
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", stderr, re.MULTILINE))


def loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_a_radio_gateway_imports_no_modbus_metrics_schemas_or_lorawan(tmp_path: Path) -> None:
    modules = imported_by_daemon(tmp_path)
    # What it does use is in the list: the capture works.
    assert {"gateway.drivers.serial_radio", "gateway.edge.engine", "aiomqtt"} <= modules
    assert [name for name in NOT_FOR_A_RADIO if loaded(modules, name)] == []


def opened(node: int) -> bytes:
    event = Event(EventCode.COVER_OPENED, 0, 4520)
    frame = Frame(node, 1, MessageType.EVENT, FrameFlags.NODE_ALARM, (event, Tilt(45.2, -1.1)))
    return encode_frame(frame)


def test_a_gateway_without_tls_never_loads_openssl_while_it_publishes(tmp_path: Path) -> None:
    """paho names ``ssl.SSLWantReadError`` in the ``except`` of each socket read and
    write, and reads until one would block whenever several PUBACKs are owed: a
    burst of alarms used to load OpenSSL (~4 MiB) into a gateway without TLS."""
    alarms = 30

    def burst(radio: PtyPort, broker: Broker) -> None:
        topics = ["-t", "covers/gw-lazy/status", "-t", "covers/gw-lazy/alarm"]
        until = ["-C", str(alarms + 1), "-W", "30"]
        sub = subprocess.Popen(
            ["mosquitto_sub", "-p", str(broker.port), "-q", "1", "-v", *topics, *until],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sub.stdout is not None
        # The retained status answers once the subscription is in place: then the burst.
        assert sub.stdout.readline().startswith("covers/gw-lazy/status ")
        radio.write(b"".join(opened(0x00D00000 + n) for n in range(alarms)))
        out, _ = sub.communicate(timeout=40)
        assert out.count('"kind":"cover_open"') == alarms, out[-2000:]

    modules = imported_by_daemon(tmp_path, traffic=burst)
    assert "gateway.edge.engine" in modules
    assert [name for name in ("_ssl", "_hashlib") if loaded(modules, name)] == []


def test_a_read_that_would_block_names_no_ssl(tmp_path: Path) -> None:
    """What the burst above does by chance, every time: paho's read of a connection
    to a real broker with nothing to read, then a publish and its PUBACK."""
    with Broker(tmp_path / "broker") as broker:
        check = (
            "import gateway, asyncio, sys\n"  # gateway first, as the daemon has it
            "from gateway.mqtt_client import UplinkClient\n"
            "async def main():\n"
            f"    async with UplinkClient('127.0.0.1', {broker.port}) as client:\n"
            "        try:\n"
            "            client._client._sock_recv(1)\n"
            "        except BlockingIOError:\n"
            "            pass\n"
            "        else:\n"
            "            raise AssertionError('a byte from a broker that owes nothing')\n"
            "        await client.publish_acked('covers/x/telemetry', b'{}')\n"
            "asyncio.run(main())\n"
            "assert '_ssl' not in sys.modules, 'OpenSSL loaded'\n"
        )
        run_fresh(check)


def test_what_the_configuration_has_is_imported(tmp_path: Path) -> None:
    extra = f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{free_port()}"\n'
    modules = imported_by_daemon(tmp_path, extra)
    assert loaded(modules, "prometheus_client")
    assert "gateway.metrics" in modules
    assert not loaded(modules, "pymodbus")


def run_fresh(check: str) -> None:
    """CHECK's asserts in an interpreter of its own (nothing imported by the tests)."""
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_deferred_module_loads_at_its_first_use() -> None:
    """urllib.request is a placeholder until used; then it is the real module, everywhere."""
    check = (
        "import sys, gateway, paho.mqtt.client as paho\n"
        "assert 'http.client' not in sys.modules\n"
        "import urllib.request\n"
        "assert isinstance(urllib.request.getproxies(), dict)\n"
        "assert 'http.client' in sys.modules\n"
        "assert paho.urllib.request is sys.modules['urllib.request'] is urllib.request\n"
        "assert urllib.request.Request('http://x/').host == 'x'\n"
    )
    run_fresh(check)


def test_ssl_and_hashlib_load_at_their_first_use() -> None:
    """asyncio, aiomqtt and paho import ssl and hashlib without OpenSSL until one is used."""
    check = (
        "import sys, gateway, asyncio, asyncio.base_events as base, aiomqtt\n"
        "assert not {'_ssl', '_hashlib'} & set(sys.modules), sys.modules.keys()\n"
        "from gateway import digests\n"
        "assert digests.sha256(b'abc').hexdigest().startswith('ba7816bf')\n"
        "assert '_hashlib' not in sys.modules\n"
        "import hashlib\n"
        "assert hashlib.sha256(b'abc').hexdigest().startswith('ba7816bf')\n"
        "import ssl\n"
        "assert isinstance(ssl.create_default_context(), ssl.SSLContext)\n"
        "assert base.sslproto.SSLProtocol is sys.modules['asyncio.sslproto'].SSLProtocol\n"
        "assert '_ssl' in sys.modules and '_hashlib' in sys.modules\n"
    )
    run_fresh(check)


@pytest.mark.parametrize("columns", [None, "50", "123"])
def test_help_is_as_wide_as_argparse_would_make_it(
    columns: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's formatters work the width out as argparse's own do (through shutil)."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    stock = argparse.HelpFormatter("covergw")._width  # the width it chose
    assert _Help("covergw")._width == stock
    assert _RawHelp("covergw")._width == stock
    if columns is not None:
        assert stock == int(columns) - 2


def test_the_host_name_codec_is_imported_at_start_not_at_the_first_connect() -> None:
    """paho resolves the broker's name in asyncio's executor thread (gateway.daemon_main)."""
    check = (
        "import sys\n"
        "assert 'encodings.idna' not in sys.modules\n"
        "import gateway.daemon_main\n"
        "assert 'encodings.idna' in sys.modules\n"
    )
    run_fresh(check)
