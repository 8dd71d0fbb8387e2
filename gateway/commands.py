"""Commands from the platform: validated, carried out once, always answered.

Requests are checked against ``schemas/command.schema.json`` (the file the
platform team reads), then against the gateway's own state (does the cover
exist?). Nothing changes unless the whole request is valid. A request id seen
before gets its first answer again without being carried out twice.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any, Protocol

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from gateway.drivers.lorawan import DownlinkError
from gateway.edge.engine import EdgeEngine, iso
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

REMEMBERED_REQUESTS = 1000


class CommandError(GatewayError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Host(Protocol):
    """What the handler needs of the running gateway."""

    engine: EdgeEngine

    def local_status(self) -> dict[str, Any]: ...
    def reload_now(self) -> dict[str, Any]: ...
    def device_downlink(
        self, args: dict[str, Any], *, request_id: str | None
    ) -> dict[str, Any]: ...


def _validator() -> Draft202012Validator:
    folder = resources.files("gateway") / "schemas"
    schemas = {
        name: json.loads((folder / name).read_text(encoding="utf-8"))
        for name in ("common.schema.json", "command.schema.json")
    }
    registry: Registry[Any] = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas.values()
    )
    return Draft202012Validator(schemas["command.schema.json"], registry=registry)


class CommandHandler:
    def __init__(self, host: Host, *, gateway_id: str, clock: Callable[[], float]) -> None:
        self.host = host
        self.gateway_id = gateway_id
        self.clock = clock
        self._validator = _validator()
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        self._request_id: str | None = None  # of the request being carried out

    def handle(self, payload: bytes) -> bytes:
        """One request in, one JSON answer out; never raises."""
        request: Any = None
        try:
            request = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return self._answer(None, None, error=CommandError("invalid", f"not JSON: {err}"))
        request_id = request.get("request_id") if isinstance(request, dict) else None
        cmd = request.get("cmd") if isinstance(request, dict) else None
        if isinstance(request_id, str) and request_id in self._answers:
            return self._answers[request_id]
        errors = sorted(self._validator.iter_errors(request), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(request)"
            answer = self._answer(
                request_id, cmd, error=CommandError("invalid", f"{where}: {errors[0].message}")
            )
        else:
            self._request_id = request_id if isinstance(request_id, str) else None
            try:
                result = self._carry_out(str(cmd), request.get("args", {}))
            except CommandError as err:
                answer = self._answer(request_id, cmd, error=err)
            else:
                answer = self._answer(request_id, cmd, result=result)
                log.info("command %s (%s) done", cmd, request_id)
        if isinstance(request_id, str):
            self._answers[request_id] = answer
            while len(self._answers) > REMEMBERED_REQUESTS:
                self._answers.popitem(last=False)
        return answer

    def _answer(
        self,
        request_id: Any,
        cmd: Any,
        *,
        result: dict[str, Any] | None = None,
        error: CommandError | None = None,
    ) -> bytes:
        body: dict[str, Any] = {
            "request_id": request_id if isinstance(request_id, str) else None,
            "cmd": cmd if isinstance(cmd, str) else None,
            "ok": error is None,
            "gateway": self.gateway_id,
            "time": iso(self.clock()),
        }
        if error is None:
            body["result"] = result or {}
        else:
            body["error"] = {"code": error.code, "message": error.message}
            log.warning("command %s (%s) refused: %s", cmd, request_id, error.message)
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _cover(self, cover_id: str) -> None:
        if cover_id not in self.host.engine.registry.covers:
            raise CommandError("not_found", f"no cover {cover_id!r} in the registry")

    def _carry_out(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        engine = self.host.engine
        match cmd:
            case "ping":
                return {"pong": True}
            case "status":
                return self.host.local_status()
            case "set_thresholds":
                cover_id, kind = args.get("cover_id"), args.get("cover_kind")
                if cover_id:
                    self._cover(cover_id)
                engine.set_thresholds(cover_id=cover_id, cover_kind=kind, values=args["thresholds"])
                return {"applied": args["thresholds"], "cover_id": cover_id, "cover_kind": kind}
            case "maintenance":
                self._cover(args["cover_id"])
                until = None
                if args["on"]:
                    until = (
                        datetime.fromisoformat(args["until"].replace("Z", "+00:00")).timestamp()
                        if "until" in args
                        else float("inf")
                    )
                    if until <= self.clock():
                        raise CommandError("invalid", "until is in the past")
                engine.set_maintenance(args["cover_id"], until)
                shown = None if until in (None, float("inf")) else iso(until)
                return {"cover_id": args["cover_id"], "maintenance": args["on"], "until": shown}
            case "rezero":
                self._cover(args["cover_id"])
                engine.rezero(args["cover_id"])
                return {"cover_id": args["cover_id"], "baseline": "the next normal reading"}
            case "reload":
                outcome = self.host.reload_now()
                if not outcome.get("ok"):
                    raise CommandError("failed", str(outcome.get("reason")))
                return outcome
            case "frames":
                node = int(args["node"], 16)
                return {
                    "node": args["node"],
                    "frames": engine.recent_frames(node, args.get("last", 10)),
                }
            case "device_downlink":
                try:
                    return self.host.device_downlink(args, request_id=self._request_id)
                except DownlinkError as err:
                    raise CommandError(err.code, err.message) from err
        raise CommandError("invalid", f"unknown command {cmd!r}")  # pragma: no cover - schema
