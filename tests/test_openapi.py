"""The OpenAPI document at /admin/openapi.json against the server: every route the node
registers is described and nothing else is (methods and paths), and real answers of a
running node, successes and errors, have a documented status and match its schema."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
from aiohttp import web

from gateway import GatewayNode
from gateway.openapi import OPENAPI_PATH
from notecard.admin_client import AdminClient
from tests.gateway_fixtures import ADMIN_TOKEN, ClientFactory, befriend_all

_METHODS = {"get", "put", "post", "patch", "delete"}


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route but static files (and the HEAD aiohttp adds
    beside each GET)."""
    routes = set()
    for route in app.router.routes():
        if isinstance(route.resource, web.StaticResource) or route.method == "HEAD":
            continue
        assert route.resource is not None
        routes.add((route.method, route.resource.canonical))
    return routes


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in document["paths"].items() for method in ops if method in _METHODS}


@pytest.fixture
async def document(node: GatewayNode) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(node.admin_url + OPENAPI_PATH) as resp:
        assert resp.status == 200  # no token needed
        data: dict[str, Any] = orjson.loads(await resp.read())
    return data


async def test_every_route_is_documented_and_every_documented_route_exists(node: GatewayNode,
                                                                             document: dict[str, Any]) -> None:
    served = registered_routes(node.admin.build())
    described = documented_routes(document)
    assert served - described == set(), "routes the document lacks"
    assert described - served == set(), "documented routes the server does not have"
    assert ("POST", "/admin/gifts") in served and ("POST", "/admin/bulk/follows") in served


def test_the_document_is_well_formed(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    schemas = document["components"]["schemas"]
    for name, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    text = orjson.dumps(document).decode()
    for ref in re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', text):
        assert ref in schemas, ref
    for path, ops in document["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)
            assert op["responses"], (method, path)


class Checked:
    """Calls the node's admin API and checks each answer against the document."""

    def __init__(self, node: GatewayNode, document: dict[str, Any], session: aiohttp.ClientSession) -> None:
        self.node, self.document, self.session = node, document, session
        self.components = document["components"]["schemas"]
        self.seen: list[tuple[str, str, int]] = []

    async def __call__(self, method: str, template: str, body: Any = None, *, token: bool = True,
                       **path: str) -> tuple[int, Any]:
        url = self.node.admin_url + template.format(**path)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if token else {}
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, url, data=data, headers=headers) as resp:
            status, raw, media = resp.status, await resp.read(), resp.content_type
        responses = self.document["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}, not documented"
        content = responses[str(status)].get("content", {})
        assert media in content, f"{method} {template} {status}: {media} not documented"
        answer = orjson.loads(raw) if media == "application/json" else raw.decode()
        schema = {**content[media]["schema"], "$defs": self.components}
        jsonschema.validate(answer, _local_refs(schema), cls=jsonschema.Draft202012Validator)
        self.seen.append((method, template, status))
        return status, answer


def _local_refs(schema: Any) -> Any:
    """The components' refs as refs into $defs of the same schema (for the validator)."""
    text = orjson.dumps(schema).decode().replace("#/components/schemas/", "#/$defs/")
    return orjson.loads(text)


@pytest.fixture
async def checked(node: GatewayNode, document: dict[str, Any]) -> AsyncIterator[Checked]:
    async with aiohttp.ClientSession() as session:
        yield Checked(node, document, session)


async def test_real_answers_match_the_documented_ones(checked: Checked, admin: AdminClient,
                                                      connect: ClientFactory) -> None:
    await befriend_all(admin, "alice", "bob", cards=3)
    await connect("bob")
    assert (await checked("POST", "/admin/users", {"user_id": "carol", "verified": True}))[0] == 201
    assert (await checked("POST", "/admin/users", {"user_id": "carol"}))[0] == 409
    assert (await checked("GET", "/admin/users/{user}", user="carol"))[0] == 200
    assert (await checked("GET", "/admin/users/{user}", user="nobody"))[0] == 404
    assert (await checked("GET", "/admin/users/{user}", token=False, user="carol"))[0] == 401
    assert (await checked("PATCH", "/admin/users/{user}", {"vip": True}, user="carol"))[0] == 200
    assert (await checked("POST", "/admin/users/{user}/mint", {"qty": 2}, user="carol"))[0] == 200
    assert (await checked("POST", "/admin/users/{user}/mint", {"qty": 0}, user="carol"))[0] == 400
    assert (await checked("PUT", "/admin/users/{user}/follows/{other}", user="carol", other="bob"))[0] == 200
    gift = {"gift_id": "g-1", "sender": "alice", "recipient": "bob"}
    assert (await checked("POST", "/admin/gifts", gift))[0] == 200
    assert (await checked("POST", "/admin/gifts", gift | {"qty": 2}))[0] == 409
    assert (await checked("POST", "/admin/gifts", {"gift_id": "g-2", "sender": "carol", "recipient": "bob"}))[0] == 422
    assert (await checked("GET", "/admin/gifts/{gift}", gift="g-1"))[0] == 200
    assert (await checked("GET", "/admin/gifts/{gift}", gift="g-2"))[1]["state"] == "refused"
    assert (await checked("GET", "/admin/users/{user}/pending", user="bob"))[0] == 200
    assert (await checked("POST", "/admin/users/{user}/disconnect", user="bob"))[0] == 200
    status, bulk = await checked("POST", "/admin/bulk/users", {"users": [{"user_id": "dave"}, {"user_id": "?"}]})
    assert (status, bulk["failed"]) == (200, 1)
    follows = {"follows": [{"follower": "dave", "followee": "carol", "mutual": True}]}
    assert (await checked("POST", "/admin/bulk/follows", follows))[0] == 200
    assert (await checked("GET", "/admin/invariant"))[1]["ok"] is True
    assert (await checked("GET", "/admin/stats"))[0] == 200
    assert (await checked("GET", "/admin/users/{user}/points", user="alice"))[0] == 200
    assert (await checked("GET", "/admin/scenes"))[0] == 200
    assert (await checked("GET", "/healthz"))[0] == 200
    assert (await checked("GET", "/readyz"))[0] == 200
    assert (await checked("GET", "/metrics"))[0] == 200
    assert (await checked("GET", "/app/config.json"))[0] == 200
    assert (await checked("GET", "/admin/webhooks/dead"))[1] == {"dead": [], "total": 0}
    assert (await checked("POST", "/admin/webhooks/dead/retry"))[1] == {"moved": 0}
    assert (await checked("GET", "/admin/dashboards/profile"))[1]["error"] == "NO_BOOKS"  # no PostgreSQL here
    # guardian links (docs/regions.md)
    assert (await checked("PATCH", "/admin/users/{user}", {"gender": "female"}, user="carol"))[0] == 200
    link = {"guardian": "dave", "operator": "ops"}
    assert (await checked("PUT", "/admin/users/{user}/guardian", link, user="carol"))[1]["guardian"] == "dave"
    assert (await checked("PUT", "/admin/users/{user}/guardian", link | {"guardian": "carol"}, user="carol"))[0] == 400
    assert (await checked("PUT", "/admin/users/{user}/guardian", link, user="nobody"))[0] == 404
    assert len((await checked("GET", "/admin/users/{user}/guardian", user="carol"))[1]["log"]) == 1
    assert len(checked.seen) == 34  # every call above was checked against the document
