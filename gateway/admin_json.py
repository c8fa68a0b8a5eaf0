"""What every admin route shares: its error, JSON in and out, and field checks (the rules
admin_http's docstring states: known fields only, exact JSON types, ids of the wire)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from aiohttp import web

from clearing.keys import is_valid_id


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}
    return obj


async def read_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    return json_object(await request.read())


def json_object(raw: bytes) -> dict[str, Any]:
    """A body already read (a signed one is checked on its bytes first) as a JSON object."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AdminError(400, "BAD_REQUEST", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise AdminError(400, "BAD_REQUEST", "body must be a JSON object")
    return data


def field(data: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise AdminError(400, "BAD_REQUEST", f"field '{name}' is required")
        return None
    if type(value) is not kind:
        raise AdminError(400, "BAD_REQUEST", f"field '{name}' must be of type {kind.__name__}")
    return value


def only(data: dict[str, Any], *allowed: str) -> dict[str, Any]:
    """Refuse fields the route does not know: silently ignored, a misspelt one would do
    something else than asked."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "no fields"
        raise AdminError(400, "BAD_REQUEST", f"unknown field '{unknown[0]}'; expected {expected}")
    return data


def path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not is_valid_id(value):
        raise AdminError(400, "BAD_REQUEST", f"{name} id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value
