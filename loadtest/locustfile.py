"""Locust scenarios for the notecard gateway: gifting pairs, idle connections, reconnect storms.

Why Locust as well as ``notecard bench``: Locust is what operators already run, it scales
out over processes and machines (master and workers), and its CSV and web UI are familiar.
Locust has no WebSocket user and runs users as gevent greenlets, where an asyncio client
cannot run; these users speak the real protocol through
:class:`loadtest.blocking_client.BlockingConnection` (sans-I/O framing over sockets that
gevent patches).

Every request and every push is a Locust request event with its latency, all measured on
this process's ``perf_counter``:

=========  ===============  ==========================================================
type       name             latency
=========  ===============  ==========================================================
WS         connect          TCP connect + WebSocket handshake + hello until welcome
WS         send_gift        send_gift written until gift_sent read
PUSH       send->offer      send_gift written until the recipient's offer arrived
WS         accept/decline   request written until gift_resolved read
PUSH       send->outcome    send_gift written until the sender's outcome arrived
WS         ping             ping until pong (idle connections)
WS         reconnect        a dropped connection's new connect, resuming its stream
=========  ===============  ==========================================================

The deployment to load is described by a target file (see :mod:`loadtest.target`), given
with ``--notecard-target FILE`` or ``NOTECARD_TARGET=FILE``. Each gifting user creates its
own two users through the admin API (unique names, so any number of Locust processes can
run side by side). Headless, for example::

    locust -f loadtest/locustfile.py --headless -u 50 -r 50 -t 60s \\
        --notecard-target bench-results/target.json --csv bench-results/locust GiftingPair

``--notecard-window S`` (what the bench uses) measures for ``S`` seconds from the moment
every user is set up instead of timing the run from its start (:mod:`loadtest.locust_window`).

Distributed: add ``--processes 2`` (one master forking workers), or run ``--master`` and
``--worker`` processes yourself; docs/benchmarks.md has the command lines.
"""

from __future__ import annotations

import random
import time
import urllib.request
import uuid
from typing import Any

import orjson
from locust import User, between, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import WorkerRunner

from loadtest import locust_window
from loadtest.blocking_client import Arrival, BlockingConnection, ConnectionLost, RequestFailed
from loadtest.target import Target
from protocol import AcceptGift, DeclineGift, GiftResolved, GiftSent, Ping, Pong, SendGift

DAY_MS = 86_400_000
#: Cards minted to each gifting user's sender: more than any run gives.
CARDS = 1_000_000
#: Share of offers declined; the rest are accepted.
DECLINE_RATIO = 0.1
#: How long a step of a gift may take before it counts as failed.
STEP_TIMEOUT_S = 10.0

_targets: dict[str, Target] = {}


def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--notecard-target", env_var="NOTECARD_TARGET", default="",
        help="JSON file describing the deployment (written by python -m loadtest.target)",
    )
    parser.add_argument(
        "--notecard-window", type=float, default=0.0,
        help="measure for this many seconds once every user is set up, then quit (-t stays the cap); "
             "the window's times and request counts go to --notecard-window-file",
    )
    parser.add_argument(
        "--notecard-window-file", default="",
        help="JSON file for the measuring window: started, ended (unix s) and per-name request counts",
    )
    parser.add_argument(
        "--notecard-until", default="",
        help="stop before -t once every listed request name has at least N requests: "
             "'N:name,name,...' (tests wait for work done, not for a fixed time)",
    )


# Locust's event hooks are untyped; going through Any keeps mypy --strict quiet about it.
_parser_hook: Any = events.init_command_line_parser
_parser_hook.add_listener(_add_arguments)


def _until_of(options: Any) -> tuple[int, list[str]] | None:
    spec = getattr(options, "notecard_until", "") if options is not None else ""
    if not spec:
        return None
    count, _, names = spec.partition(":")
    return int(count), [name for name in names.split(",") if name]


def _stop_when_done(environment: Environment, count: int, names: list[str]) -> None:
    """Quit the run once each name has ``count`` requests (``-t`` stays the upper bound)."""
    import gevent  # Locust's own dependency; imported here so the module imports without it

    def requests_of(name: str) -> int:
        return sum(entry.num_requests for entry in environment.stats.entries.values() if entry.name == name)

    while not all(requests_of(name) >= count for name in names):
        gevent.sleep(0.2)
    runner: Any = environment.runner
    runner.quit()


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    # The master (or the only process) sees every worker's requests; a worker sees its own.
    if environment.runner is None or isinstance(environment.runner, WorkerRunner):
        return
    import gevent

    until = _until_of(options)
    if until is not None:
        gevent.spawn(_stop_when_done, environment, *until)
    window_s = getattr(options, "notecard_window", 0.0) if options is not None else 0.0
    if window_s > 0:
        gevent.spawn(locust_window.measure, environment, window_s, getattr(options, "notecard_window_file", ""))


_init_hook: Any = events.init
_init_hook.add_listener(locust_window.on_init)
_start_hook: Any = events.test_start
_start_hook.add_listener(_on_test_start)


def target_of(environment: Environment) -> Target:
    """The deployment to load, read once per process from ``--notecard-target``."""
    options = environment.parsed_options
    path = getattr(options, "notecard_target", "") if options is not None else ""
    if not path:
        raise StopUser("no target: pass --notecard-target FILE (see python -m loadtest.target)")
    found = _targets.get(path)
    if found is None:
        with open(path, "rb") as fh:
            found = _targets[path] = Target.from_json(fh.read())
    return found


def _report(environment: Environment, kind: str, name: str, seconds: float, size: int = 0,
            error: BaseException | None = None) -> None:
    hook: Any = environment.events.request
    hook.fire(
        request_type=kind, name=name, response_time=seconds * 1000.0, response_length=size,
        exception=error, context={},
    )


def _admin(target: Target, method: str, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        target.admin_url + path, data=orjson.dumps(body), method=method,
        headers={"Authorization": f"Bearer {target.admin_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=STEP_TIMEOUT_S) as response:
        response.read()


def provision_pair(target: Target) -> tuple[str, str]:
    """A verified sender with cards and a verified recipient, mutual friends for 4 days."""
    tag = uuid.uuid4().hex[:12]
    sender, recipient = f"lc{tag}-s", f"lc{tag}-r"
    since = int(time.time() * 1000) - 4 * DAY_MS
    for user in (sender, recipient):
        _admin(target, "POST", "/admin/users", {"user_id": user, "verified": True})
    _admin(target, "POST", f"/admin/users/{sender}/mint", {"kind": "note", "qty": CARDS})
    _admin(target, "PUT", f"/admin/users/{sender}/follows/{recipient}", {"since_ms": since})
    _admin(target, "PUT", f"/admin/users/{recipient}/follows/{sender}", {"since_ms": since})
    return sender, recipient


def open_connection(environment: Environment, url: str, token: str, *, name: str = "connect",
                    epoch: str | None = None, offset: int | None = None) -> BlockingConnection:
    """Connect and authenticate, reporting the time to the welcome."""
    conn = BlockingConnection(url, token, timeout_s=STEP_TIMEOUT_S)
    started = time.perf_counter()
    try:
        arrival = conn.connect(epoch=epoch, offset=offset)
    except (OSError, RequestFailed, TimeoutError) as exc:
        _report(environment, "WS", name, time.perf_counter() - started, error=exc)
        raise
    _report(environment, "WS", name, arrival.at - started, arrival.size)
    return conn


class _SettingUpUser(User):
    """A user that tells the measuring window (:mod:`loadtest.locust_window`) when its
    set-up is over, done or given up, so the window opens only once every user is ready."""

    abstract = True

    def set_up(self) -> None:
        """Accounts and connections; each user class brings its own (none: ready at once)."""

    def on_start(self) -> None:
        ok = False
        try:
            self.set_up()
            ok = True
        finally:
            locust_window.user_set_up(self.environment, ok=ok)


class GiftingPair(_SettingUpUser):
    """A sender on the first node and a recipient on the last one, giving one card at a time:
    send, offer, accept (or decline), outcome. Closed loop: the next gift starts when the
    sender has heard the outcome."""

    weight = 2
    wait_time = constant(0)

    def set_up(self) -> None:
        target = target_of(self.environment)
        started = time.perf_counter()
        try:
            self.sender_id, self.recipient_id = provision_pair(target)
        except OSError as exc:
            _report(self.environment, "HTTP", "provision", time.perf_counter() - started, error=exc)
            raise StopUser() from exc
        _report(self.environment, "HTTP", "provision", time.perf_counter() - started)
        self.sender = open_connection(self.environment, target.urls[0], target.token(self.sender_id))
        self.recipient = open_connection(self.environment, target.urls[-1], target.token(self.recipient_id))

    def on_stop(self) -> None:
        for conn in (getattr(self, "sender", None), getattr(self, "recipient", None)):
            if conn is not None:
                conn.close()

    @task
    def give(self) -> None:
        env, sender, recipient = self.environment, self.sender, self.recipient
        if not (sender.alive and recipient.alive):
            raise StopUser()
        gift_id = uuid.uuid4().hex
        step = "send_gift"
        try:
            sent, reply = sender.request(
                lambda rid: SendGift(rid=rid, gift_id=gift_id, to=self.recipient_id, kind="note", qty=1), GiftSent
            )
            _report(env, "WS", "send_gift", reply.at - sent, reply.size)
            step = "send->offer"
            offer = recipient.wait_event("offer", gift_id)
            _report(env, "PUSH", "send->offer", offer.at - sent, offer.size)
            decline = random.random() < DECLINE_RATIO
            step = "decline" if decline else "accept"
            answer: Any = DeclineGift if decline else AcceptGift
            asked, resolved = recipient.request(lambda rid: answer(rid=rid, gift_id=gift_id), GiftResolved)
            _report(env, "WS", step, resolved.at - asked, resolved.size)
            step = "send->outcome"
            outcome: Arrival = sender.wait_event("outcome", gift_id)
            _report(env, "PUSH", "send->outcome", outcome.at - sent, outcome.size)
            recipient.wait_event("outcome", gift_id)  # both are told; keeps the mailbox empty
        except (RequestFailed, TimeoutError, ConnectionLost, OSError) as exc:
            _report(env, "PUSH" if "->" in step else "WS", step, 0.0, error=exc)


class IdleConnection(_SettingUpUser):
    """An authenticated connection that mostly sits: one ``ping`` every 20-40 s. Its user
    needs no account (a token is enough to connect), so thousands cost no set-up."""

    weight = 2
    wait_time = between(20, 40)

    def set_up(self) -> None:
        target = target_of(self.environment)
        url = random.choice(target.urls)
        self.conn = open_connection(self.environment, url, target.token(f"li{uuid.uuid4().hex[:12]}"))

    def on_stop(self) -> None:
        conn: BlockingConnection | None = getattr(self, "conn", None)
        if conn is not None:
            conn.close()

    @task
    def ping(self) -> None:
        if not self.conn.alive:
            raise StopUser()
        try:
            sent, pong = self.conn.request(lambda rid: Ping(rid=rid), Pong)
        except (RequestFailed, TimeoutError, ConnectionLost, OSError) as exc:
            _report(self.environment, "WS", "ping", 0.0, error=exc)
            return
        _report(self.environment, "WS", "ping", pong.at - sent, pong.size)


class ReconnectStorm(_SettingUpUser):
    """A connection that keeps dropping (no close frame, as when a node or a network path
    dies) and coming back at once to a random node, resuming its event stream. Many of
    these at once are the storm that follows a node crash."""

    weight = 1
    wait_time = between(0.5, 2.0)

    def set_up(self) -> None:
        target = target_of(self.environment)
        self.user_id = f"lr{uuid.uuid4().hex[:12]}"
        self.conn = open_connection(self.environment, random.choice(target.urls), target.token(self.user_id))

    def on_stop(self) -> None:
        conn: BlockingConnection | None = getattr(self, "conn", None)
        if conn is not None:
            conn.close()

    @task
    def reconnect(self) -> None:
        target = target_of(self.environment)
        old = self.conn
        old.abort()
        try:
            self.conn = open_connection(self.environment, random.choice(target.urls), target.token(self.user_id),
                                        name="reconnect", epoch=old.epoch, offset=old.offset)
        except (OSError, RequestFailed, TimeoutError):
            self.conn = old  # tried again on the next task; the failure is reported
