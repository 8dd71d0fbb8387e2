"""Every published schema compiles under the Python validator and under Ajv's strict mode.

Platform teams validate with whatever their language offers; Ajv in strict
mode (``strictRequired`` above all: a required name must be a declared
property of the same schema object) is the strictest common one. Ajv runs
where Node is present: ``./dev setup`` installs it into ``.cache/ajv``; the
test installs it there itself if it can, and skips with the reason if not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.harness import SCHEMAS, VALIDATORS

ROOT = Path(__file__).resolve().parent.parent
AJV_DIR = ROOT / ".cache" / "ajv"
AJV_SPEC = "ajv@^8.17"


def _subschemas(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _subschemas(value)
    elif isinstance(node, list):
        for value in node:
            found += _subschemas(value)
    return found


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.schema.json")), ids=lambda p: p.name)
def test_schema_is_valid_and_every_required_name_is_declared_beside_it(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    for sub in _subschemas(schema):
        required = sub.get("required")
        if isinstance(required, list):
            declared = sub.get("properties", {})
            missing = [name for name in required if name not in declared]
            assert missing == [], f"{path.name}: required {missing} not in properties beside it"


def test_every_reference_resolves() -> None:
    for name, validator in VALIDATORS.items():
        list(validator.iter_errors({}))  # walks every $ref reachable from the top
        assert name


def _ajv() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        pytest.skip("node is not installed: Ajv strict-mode check skipped")
    module = AJV_DIR / "node_modules" / "ajv"
    if not module.is_dir():
        if npm is None:
            pytest.skip("npm is not installed: cannot install Ajv; strict-mode check skipped")
        done = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(AJV_DIR),
                AJV_SPEC,
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0 or not module.is_dir():
            pytest.skip(f"Ajv could not be installed (offline?): {done.stderr.decode()[-200:]}")
    return AJV_DIR / "node_modules"


def test_every_schema_compiles_under_ajv_strict_mode() -> None:
    modules = _ajv()
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, str(ROOT / "tests" / "js" / "ajv_strict.js"), str(SCHEMAS)],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    report = done.stdout.decode()
    assert done.returncode == 0, report + done.stderr.decode()
    assert report.count("ok ") == len(list(SCHEMAS.glob("*.schema.json")))
