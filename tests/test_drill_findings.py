"""Defects the failover drills found, each reduced to a small deterministic test.

Each was fixed where it lives (gateway/, clearing/scripts/); the tests keep the fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import redis.asyncio as aioredis

from clearing import KeySchema
from gateway import GatewayNode, GatewaySettings, connect_redis
from notecard.admin_client import AdminClient
from notecard.local_redis import LocalRedis, free_port
from tests.gateway_fixtures import ADMIN_TOKEN, TOKEN_SECRET, ClientFactory, befriend_all


async def test_offer_with_an_offset_reused_after_a_lost_tail_is_delivered(
        admin: AdminClient, connect: ClientFactory, redis: aioredis.Redis) -> None:
    """A failover that loses the last writes rolls a user's stream back (seq and entries)
    while its epoch stays the same; the next event reuses an offset the connected client
    was already given, and both the gateway and the SDK dropped it as already seen.
    Fixed in clearing/scripts/lib.lua: a stream written under another replication id
    starts a new epoch, so the gateway closes the connection (3004), the client comes back
    with recovered=false and finds the offer in its pending list."""
    await befriend_all(admin, "alice", "bob", cards=10)
    alice, bob = await connect("alice"), await connect("bob")
    first = await alice.send_gift("bob", qty=1)
    assert (await bob.next_offer(5)).gift_id == first.gift_id
    # What the promoted replica holds: the offer event never happened (the gift itself
    # may be lost too; the stream is what matters here).
    # Rebuild bob's stream without its newest entry, as the replica had it.
    keys = KeySchema()
    stream = keys.events("bob")
    seq = int(await redis.hget(keys.event_meta("bob"), "seq") or 0)
    kept = [(entry_id, fields) for entry_id, fields in await redis.xrange(stream) if entry_id != f"{seq}-0".encode()]
    await redis.delete(stream)
    for entry_id, fields in kept:
        await redis.xadd(stream, fields, id=entry_id)
    await redis.hset(keys.event_meta("bob"), "seq", seq - 1)
    await promote_as_after_a_failover(redis)

    second = await alice.send_gift("bob", qty=1)
    offer = await bob.next_offer(3)
    assert offer.gift_id == second.gift_id


async def promote_as_after_a_failover(redis: aioredis.Redis) -> None:
    """Give the server a new replication id, as a promoted replica gets, keeping its data:
    it becomes a replica of an address where nothing listens, then a primary again."""
    before = (await redis.info("replication"))["master_replid"]
    await redis.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    await redis.execute_command("REPLICAOF", "NO", "ONE")
    assert (await redis.info("replication"))["master_replid"] != before


async def test_node_start_waits_for_redis_to_come_back(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "late-redis", port=free_port())
    settings = GatewaySettings(redis_url=server.url, port=0, admin_port=0, data_dir=tmp_path,
                               log_format="text", redis_timeout_s=1.0)
    starter = threading.Timer(1.0, server.start)
    starter.start()
    try:
        client = connect_redis(settings)
        node = GatewayNode(settings, client, token_secret=TOKEN_SECRET, admin_token=ADMIN_TOKEN)
        started = time.monotonic()
        try:
            await node.start()
        except Exception as exc:  # today: ClearingUnavailable from the first heartbeat
            raise RuntimeError(f"node.start() gave up after {time.monotonic() - started:.1f}s: {exc!r}") from exc
        finally:
            with contextlib.suppress(Exception):
                await node.stop()
            with contextlib.suppress(Exception):
                await client.aclose()
        assert node.subscriber.hearing()
    finally:
        starter.cancel()
        starter.join()
        await asyncio.to_thread(server.stop)


async def test_a_node_reaped_while_paused_is_live_again_after_one_beat(redis: aioredis.Redis) -> None:
    """Found by the node_pause drill (fixed in gateway/periodic.py): a node paused past the
    node TTL is reaped; on resume it re-registered its connections with leave() + connect(),
    but leave() also removed its heartbeat, so every later beat found it "unknown" again and
    its users stayed offline (RECIPIENT_OFFLINE) for good."""
    from types import SimpleNamespace

    from clearing.testing import World
    from gateway.periodic import NodeLiveness

    world = await World.build(redis)
    await world.user("ann", online=False)
    hub = SimpleNamespace(all_connections=lambda: [SimpleNamespace(user_id="ann")], catch_up_everyone_soon=lambda: None)
    liveness = NodeLiveness(world.presence, "n1", hub)  # type: ignore[arg-type]
    await liveness.beat()
    await world.presence.connect("ann", "n1")
    assert await world.presence.nodes_of("ann") == ["n1"]

    world.clock.advance(world.rules.node_ttl_ms)  # paused past the TTL: another node reaps it
    assert "n1" in await world.presence.reap_dead_nodes()
    assert await world.presence.nodes_of("ann") == []

    await liveness.beat()  # resumed: re-registers
    assert await world.presence.nodes_of("ann") == ["n1"]
    assert not await world.presence.heartbeat("n1"), "the node must be known after re-registering"
    assert (await world.check()).ok


async def test_room_viewers_of_a_node_reaped_while_paused_count_again_after_one_beat(
    redis: aioredis.Redis,
) -> None:
    """The reaper drops a dead node's room viewers with its presence. A node that was only
    paused keeps its connections, and they still watch their rooms: its first beat after
    resuming counts them again (they used to stay uncounted until they rejoined)."""
    from types import SimpleNamespace

    from clearing.rooms import Rooms
    from clearing.testing import World
    from gateway.periodic import NodeLiveness
    from gateway.rooms import RoomHub

    class Conn:  # what RoomHub and NodeLiveness read of a connection
        def __init__(self, user_id: str) -> None:
            self.user_id = user_id

    world = await World.build(redis)
    rooms = Rooms(redis, world.rules, world.keys, world.clock)
    await world.user("stage")
    await rooms.open_wish("stage", "note", 5)  # only an open room can be joined
    conns = [Conn("ann"), Conn("ann"), Conn("bob")]  # ann on two devices counts once
    hub = SimpleNamespace(all_connections=lambda: conns, catch_up_everyone_soon=lambda: None)
    room_hub = RoomHub(rooms, "n1")
    liveness = NodeLiveness(world.presence, "n1", hub, room_hub)  # type: ignore[arg-type]
    await liveness.beat()
    for conn in conns:
        await room_hub.join(conn, "stage")  # type: ignore[arg-type]
    assert (await rooms.state("stage")).viewers == 2

    world.clock.advance(world.rules.node_ttl_ms)  # paused past the TTL: another node reaps it
    assert "n1" in await world.presence.reap_dead_nodes()
    assert (await rooms.state("stage")).viewers == 0

    await liveness.beat()  # resumed
    assert (await rooms.state("stage")).viewers == 2
    await room_hub.leave(conns[2], "stage")  # type: ignore[arg-type]
    assert (await rooms.state("stage")).viewers == 1  # the counts are consistent, not doubled
    assert (await world.check()).ok
