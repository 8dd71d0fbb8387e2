"""TLS to a real Mosquitto listener that requires client certificates (made here with openssl)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest

from firmware_sim.broker import Broker, free_port
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.tools.selftest import Verdict, check_broker
from gateway.uplink import UplinkState
from tests.harness import Collector, spawn_daemon


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


def make_cert(d: Path, ca: str, name: str, san: str | None = None) -> None:
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=d,
    )
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.name,
        "-out",
        f"{name}.crt",
        cwd=d,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "ca", "broker", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "ca", "gw-tls")
    make_cert(d, "ca", "platform")
    return d


def tls_broker(tmp: Path, pki: Path) -> Broker:
    port = free_port()
    conf = (
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki}/ca.crt\ncertfile {pki}/broker.crt\nkeyfile {pki}/broker.key\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
    )
    return Broker(tmp / "broker", extra_conf=conf, port=port)


def gateway(tmp: Path, port: int, pki: Path, *, ca: str, cert: bool = True) -> Gateway:
    tls = {"enabled": True, "ca_file": str(pki / f"{ca}.crt")}
    if cert:
        tls |= {"cert_file": str(pki / "gw-tls.crt"), "key_file": str(pki / "gw-tls.key")}
    data = {
        "gateway": {"id": "gw-tls", "state_dir": str(tmp / "state")},
        "uplink": {
            "host": "127.0.0.1",
            "port": port,
            "tls": tls,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.3,
            "stats_interval_s": 0.5,
            # A refused client certificate shows only as a CONNACK that never comes.
            "publish_timeout_s": 3,
        },
    }
    return Gateway(parse_config(data, base_dir=tmp))


def platform_tls(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "platform.crt"), str(pki / "platform.key"))
    return context


async def run_for(gw: Gateway, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


async def run_until_refused(gw: Gateway) -> None:
    """Run until the uplink has failed once (a stop cuts an unconnected attempt short)."""
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    async with asyncio.timeout(15):
        while gw.uplink is None or gw.uplink.stats.last_error is None:
            await asyncio.sleep(0.05)  # the uplink's state has no event to wait on
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_gateway_connects_with_its_certificate(tmp_path: Path, pki: Path) -> None:
    with tls_broker(tmp_path, pki) as broker:
        async with Collector(broker.port, tls_context=platform_tls(pki)) as collector:
            gw = gateway(tmp_path, broker.port, pki, ca="ca")
            await run_for(gw, 1.5)
            await collector.wait_for(lambda: len(collector.of("status")) >= 2)
    assert [s["state"] for s in collector.of("status")][:1] == ["online"]
    assert collector.of("stats")
    assert collector.errors == []


async def test_the_daemon_process_loads_tls_when_it_is_configured(
    tmp_path: Path, pki: Path
) -> None:
    """``covergw run`` as a process: ``ssl`` is a placeholder until the uplink's TLS uses it
    (gateway/__init__.py); the real module then takes its place and the session is TLS."""
    with tls_broker(tmp_path, pki) as broker:
        config = tmp_path / "gw.toml"
        config.write_text(
            f'[gateway]\nid = "gw-tls"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[uplink]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            f'[uplink.tls]\nenabled = true\nca_file = "{pki / "ca.crt"}"\n'
            f'cert_file = "{pki / "gw-tls.crt"}"\nkey_file = "{pki / "gw-tls.key"}"\n',
            encoding="utf-8",
        )
        async with Collector(broker.port, tls_context=platform_tls(pki)) as collector:
            daemon = spawn_daemon(config, tmp_path / "daemon.log")
            try:
                await collector.wait_for(lambda: len(collector.of("status")) >= 1, timeout=30)
            finally:
                daemon.terminate()
                daemon.wait(20)
    log = (tmp_path / "daemon.log").read_text(encoding="utf-8")
    assert [s["state"] for s in collector.of("status")][:1] == ["online"], log[-2000:]
    assert daemon.returncode == 0, log[-2000:]


@pytest.mark.parametrize(
    ("ca", "cert", "why"),
    [
        ("rogue-ca", True, "broker certificate does not verify"),
        ("ca", False, "no client certificate"),
    ],
)
async def test_refused_tls_never_falls_back_to_plaintext(
    tmp_path: Path, pki: Path, ca: str, cert: bool, why: str
) -> None:
    with tls_broker(tmp_path, pki) as broker:
        async with Collector(broker.port, tls_context=platform_tls(pki)) as collector:
            gw = gateway(tmp_path, broker.port, pki, ca=ca, cert=cert)
            await run_until_refused(gw)
            await asyncio.sleep(0.3)
    assert gw.uplink is not None
    assert gw.uplink.stats.connects == 0, why
    assert gw.uplink.stats.state is UplinkState.STOPPED
    assert gw.uplink.stats.last_error
    assert collector.of("status") == []  # nothing reached the broker, in any form


@pytest.mark.parametrize(("ca", "verdict"), [("ca", Verdict.OK), ("rogue-ca", Verdict.FAIL)])
async def test_selftest_checks_the_broker_with_the_gateways_own_tls(
    tmp_path: Path, pki: Path, ca: str, verdict: Verdict
) -> None:
    """TlsConfig.context(), as the uplink uses it: a broker that verifies passes, a rogue CA not."""
    with tls_broker(tmp_path, pki) as broker:
        gw = gateway(tmp_path, broker.port, pki, ca=ca)
        checks = await check_broker(gw.config)
    tls = [c for c in checks if c.name == "tls"]
    assert [c.verdict for c in tls] == [verdict], checks
