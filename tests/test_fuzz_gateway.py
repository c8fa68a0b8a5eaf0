"""The fuzz command's contract, in CI size: a few thousand frames, well under 20 seconds.

- the seeded mutator through the decoder: only documented refusals, everything decoded
  round-trips;
- the same frames through a live node: every frame answered in order with its documented
  error or reply, oversize closes with 1009, fuzzed first frames close with 35xx, the
  ledger unchanged, the node still serving;
- hypothesis choosing the frames (any bytes, any text, and message-shaped maps with
  hostile values) for a live node's authenticated connection; that node is an OS
  process, since hypothesis refuses draws while other code in the process uses
  ``random`` (the node's jittered timers would).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import mint_token
from loadtest.fuzz import (
    FUZZ_USER,
    SEED_MESSAGES,
    Mutator,
    Stats,
    _expect_reply,
    _session,
    fuzz_decoder,
    fuzz_gateway,
)
from notecard.admin_client import AdminClient
from notecard.cluster import LocalCluster
from notecard.local_redis import LocalRedis
from protocol import MAX_FRAME_BYTES, Encoding, Frame, decode_server, to_wire


def test_mutator_is_seeded() -> None:
    a, b = Mutator(5, Encoding.JSON), Mutator(5, Encoding.JSON)
    assert [a.frame() for _ in range(50)] == [b.frame() for _ in range(50)]


def test_decoder_fuzz() -> None:
    stats = fuzz_decoder(6000, seed=11)
    assert stats.failures == []
    assert stats.frames == 6000
    # the mix covers every refusal and some frames that decode
    assert {"BAD_FRAME", "BAD_FIELD", "UNKNOWN_TYPE"} <= set(stats.refused)
    assert stats.decoded > 100


async def test_live_gateway_fuzz(redis_server: LocalRedis, redis: Any) -> None:
    stats = await fuzz_gateway(2000, 40, seed=3, deadline_s=60, redis_url=redis_server.url)
    assert stats.failures == []
    assert stats.frames >= 2000
    assert "1009" in stats.closes and "3504" in stats.closes


# ---------------------------------------------------------------- hypothesis, live


@dataclasses.dataclass(frozen=True)
class _LiveNode:
    url: str
    token: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_LiveNode]:
    """One node as an OS process (hypothesis must own the random module in this one),
    with the limits that would close a connection after a few bad frames raised."""
    base = Path(tmp_path_factory.mktemp("hyp-live"))
    env = {"NOTECARD_MAX_BAD_FRAMES": str(10**9), "NOTECARD_RATE_PER_S": str(10**6),
           "NOTECARD_RATE_BURST": str(10**6), "NOTECARD_USER_RATE_PER_S": str(10**6),
           "NOTECARD_USER_RATE_BURST": str(10**6), "NOTECARD_LOG_LEVEL": "WARNING"}
    with LocalRedis(base / "redis") as server, LocalCluster(server.url, base / "nodes", 1, env=env) as cluster:
        node = cluster.nodes[0]

        async def create() -> None:
            async with AdminClient(node.admin_url, cluster.admin_token) as admin:
                await admin.create_user(FUZZ_USER, verified=True)

        asyncio.run(create())
        yield _LiveNode(node.url, mint_token(cluster.token_secret, FUZZ_USER, ttl_s=3600))


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.sampled_from(["ping", "send_gift", "accept", "hello", "note", "bob", FUZZ_USER]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_shaped = st.builds(
    lambda base, extra: {**base, **extra},
    st.sampled_from([to_wire(m) for m in SEED_MESSAGES]),
    st.dictionaries(st.sampled_from(["t", "rid", "gift_id", "to", "kind", "qty", "v", "x"]), _values, max_size=3),
)


@st.composite
def _frames(draw: st.DrawFn, encoding: Encoding) -> Frame:
    kind = draw(st.sampled_from(["bytes", "text", "shaped"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200))
    value = draw(_shaped)
    if encoding is Encoding.MSGPACK:
        return msgpack.packb(value, use_bin_type=True)
    return orjson.dumps(value, default=str).decode()


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), encoding=st.sampled_from(list(Encoding)))
def test_live_frame_handling_under_hypothesis(live: _LiveNode, data: st.DataObject, encoding: Encoding) -> None:
    frames = data.draw(st.lists(_frames(encoding), min_size=1, max_size=12))
    frames = [f for f in frames if len(f if isinstance(f, bytes) else f.encode("utf-8", "surrogatepass"))
              <= MAX_FRAME_BYTES]
    url = live.url

    async def exchange() -> Stats:
        stats = Stats()
        ws = await _session(url, live.token, encoding)
        try:
            for frame in frames:
                await ws.send(frame)
            for frame in frames:
                reply = decode_server(await asyncio.wait_for(ws.recv(), 10), encoding)
                _expect_reply(frame, encoding, reply, stats)
        finally:
            await ws.close()
        return stats

    stats = asyncio.run(exchange())
    assert stats.failures == []
