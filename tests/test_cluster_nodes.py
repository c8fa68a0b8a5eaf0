"""Several gateway nodes as separate OS processes over one Redis: cross-node delivery,
devices on different nodes, a node killed with SIGKILL, pub/sub connections killed, and
a stream trimmed while a client was away."""

from __future__ import annotations

import asyncio
import secrets
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from clearing import GiftRules, Presence, check_invariant
from gateway.auth import mint_token
from notecard.admin_client import AdminClient
from notecard.cluster import LocalCluster
from notecard.local_redis import LocalRedis
from notecard_sdk import GiftRefused, NotecardClient
from tests.gateway_fixtures import befriend_all

UNITS = GiftRules().units_per_card
#: Fast liveness and roomy daily limits: these tests are about delivery, not quotas.
CLUSTER_ENV = {
    "NOTECARD_NODE_HEARTBEAT_S": "0.3",
    "NOTECARD_NODE_TTL_S": "1.5",
    "NOTECARD_SUBSCRIBER_PROBE_S": "0.5",
    "NOTECARD_DAILY_SEND_LIMIT": "100",
    "NOTECARD_DAILY_RECEIVE_LIMIT": "100",
    "NOTECARD_STREAM_MAXLEN": "4",
    "NOTECARD_LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="module")
def cluster_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    # Small stream nodes, so that approximate trimming (XADD MAXLEN ~) trims at small sizes.
    server = LocalRedis(Path(tmp_path_factory.mktemp("cluster-redis")),
                        extra_args=("--stream-node-max-entries", "2"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster(cluster_redis: LocalRedis, tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(cluster_redis.url, tmp_path / "nodes", nodes=2, env=CLUSTER_ENV) as started:
        yield started


@pytest.fixture
async def redis(cluster_redis: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(cluster_redis.url)
    yield client
    report = await check_invariant(client, GiftRules())
    assert report.ok, report.violations
    await client.aclose()


@pytest.fixture
async def admin(cluster: LocalCluster) -> AsyncIterator[AdminClient]:
    async with AdminClient(cluster.nodes[0].admin_url, cluster.admin_token) as client:
        yield client


@pytest.fixture
async def users(admin: AdminClient) -> tuple[str, str]:
    """Two fresh friends (names unique in the module's shared Redis), 10 cards each."""
    tag = secrets.token_hex(3)
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    await befriend_all(admin, alice, bob, cards=10)
    return alice, bob


@pytest.fixture
async def clients(cluster: LocalCluster) -> AsyncIterator[Callable[..., NotecardClient]]:
    made: list[NotecardClient] = []

    def make(user: str, urls: str | list[str], **kwargs: object) -> NotecardClient:
        client = NotecardClient(urls, mint_token(cluster.token_secret, user), **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def metric(admin_url: str, name: str) -> float:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_gift_from_node_a_to_node_b(cluster: LocalCluster, users: tuple[str, str],
                                         clients: Callable[..., NotecardClient], redis: aioredis.Redis) -> None:
    alice_id, bob_id = users
    node_a, node_b = cluster.nodes
    alice, bob = clients(alice_id, node_a.url), clients(bob_id, node_b.url)
    await alice.connect()
    await bob.connect()
    assert alice.node != bob.node
    gift = await alice.send_gift(bob_id, qty=3)
    offer = await bob.next_offer(5)
    assert offer.gift_id == gift.gift_id
    await bob.accept(offer.gift_id)
    outcome = await alice.next_outcome(5)
    assert (outcome.gift_id, outcome.state) == (gift.gift_id, "accepted")
    assert (await alice.balance()).available["note"] == 7 * UNITS
    assert (await bob.balance()).available["note"] == 13 * UNITS
    assert metric(node_b.admin_url, "notecard_delivery_lag_seconds_count") >= 1


async def test_two_devices_on_two_nodes_first_answer_wins(
    cluster: LocalCluster, users: tuple[str, str], clients: Callable[..., NotecardClient], redis: aioredis.Redis
) -> None:
    alice_id, bob_id = users
    node_a, node_b = cluster.nodes
    alice = clients(alice_id, node_a.url)
    phone, laptop = clients(bob_id, node_a.url), clients(bob_id, node_b.url)
    for client in (alice, phone, laptop):
        await client.connect()
    gift = await alice.send_gift(bob_id)
    assert (await phone.next_offer(5)).gift_id == gift.gift_id
    assert (await laptop.next_offer(5)).gift_id == gift.gift_id
    await laptop.accept(gift.gift_id)
    with pytest.raises(GiftRefused) as late:
        await phone.decline(gift.gift_id)
    assert late.value.code == "ALREADY_RESOLVED"
    assert (await phone.next_outcome(5)).state == "accepted"
    assert (await alice.next_outcome(5)).state == "accepted"


async def test_node_killed_while_an_offer_is_pending(
    cluster: LocalCluster, users: tuple[str, str], clients: Callable[..., NotecardClient], redis: aioredis.Redis
) -> None:
    alice_id, bob_id = users
    node_a, node_b = cluster.nodes
    alice = clients(alice_id, node_a.url)
    bob = clients(bob_id, [node_b.url, node_a.url], backoff_base_s=0.05)
    await alice.connect()
    await bob.connect()
    gift = await alice.send_gift(bob_id, qty=2)
    assert (await bob.next_offer(5)).gift_id == gift.gift_id

    node_b.kill()  # SIGKILL: no goodbye, no presence clean-up
    await wait_for(lambda: bob.connections == 2 and bob.url == node_a.url)
    assert bob.node == alice.node
    assert [g.gift_id for g in bob.welcome.pending] == [gift.gift_id]  # type: ignore[union-attr]
    assert (await bob.accept(gift.gift_id)).state == "accepted"
    assert (await alice.next_outcome(5)).state == "accepted"
    assert (await bob.balance()).available["note"] == 12 * UNITS
    assert (await alice.balance()).available["note"] == 8 * UNITS

    # The dead node's presence entries are reaped by the survivor within the node TTL.
    presence = Presence(redis, GiftRules())
    dead = node_b.env["NOTECARD_NODE_ID"]
    for _ in range(100):
        if dead not in await presence.nodes_of(bob_id):
            break
        await asyncio.sleep(0.05)
    assert await presence.nodes_of(bob_id) == [node_a.env["NOTECARD_NODE_ID"]]


async def test_killed_pubsub_connections_resubscribe_and_miss_nothing(
    cluster: LocalCluster, users: tuple[str, str], clients: Callable[..., NotecardClient], redis: aioredis.Redis
) -> None:
    alice_id, bob_id = users
    node_a, node_b = cluster.nodes
    alice, bob = clients(alice_id, node_a.url), clients(bob_id, node_b.url)
    await alice.connect()
    await bob.connect()
    before = metric(node_b.admin_url, "notecard_subscriber_reconnects_total")
    killed = await redis.client_kill_filter(_type="pubsub")
    assert killed >= 2  # one subscriber per node
    sent = [await alice.send_gift(bob_id) for _ in range(3)]  # some of these race the resubscribe
    offers = [await bob.next_offer(5) for _ in sent]
    assert sorted(o.gift_id for o in offers) == sorted(g.gift_id for g in sent)
    await wait_for(lambda: metric(node_b.admin_url, "notecard_subscriber_reconnects_total") > before)
    for offer in offers:
        await bob.decline(offer.gift_id)
    assert (await alice.balance()).available["note"] == 10 * UNITS


async def test_client_back_after_its_stream_was_trimmed_is_told_not_recovered(
    cluster: LocalCluster, users: tuple[str, str], clients: Callable[..., NotecardClient], redis: aioredis.Redis
) -> None:
    alice_id, bob_id = users
    node_a, node_b = cluster.nodes
    alice = clients(alice_id, node_a.url)
    tablet = clients(bob_id, node_a.url)  # keeps bob online and answers while the phone is away
    phone = clients(bob_id, node_b.url)
    for client in (alice, tablet, phone):
        await client.connect()
    assert phone.recovered

    phone._backoff = lambda attempt: 1.5  # type: ignore[method-assign]  # away long enough
    assert phone._ws is not None
    phone._ws.transport.abort()
    await wait_for(lambda: not phone._connected.is_set())
    for _ in range(4):  # 8 events for bob: more than the stream keeps
        gift = await alice.send_gift(bob_id)
        await tablet.accept(gift.gift_id)
    await wait_for(lambda: phone.connections == 2)
    assert phone.recovered is False
    assert phone.welcome is not None and phone.welcome.recovered is False
