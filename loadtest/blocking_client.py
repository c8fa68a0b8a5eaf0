"""A blocking notecard client: the project's sans-I/O protocol over a plain socket.

Why not the SDK: Locust runs each simulated user as a gevent greenlet, and an asyncio
client cannot run there. This client uses only blocking sockets, threads, locks and
events from the standard library, which gevent's monkey-patching (Locust applies it on
import) turns into cooperative ones; outside Locust they are ordinary threads. The
WebSocket framing is ``websockets``' sans-I/O :class:`~websockets.client.ClientProtocol`
(bytes in, events out, bytes to write) and the messages are the ``protocol`` package's,
so this client speaks exactly the wire format of ``docs/protocol.md``.

One reader thread per connection takes every frame off the socket as soon as it arrives
and stamps it with the clock (``time.perf_counter`` by default) before anyone looks at
it, so a push is timed when it reached this process, not when a user got round to
reading it. The reader also answers the server's WebSocket pings (the sans-I/O protocol
queues the pong; the reader writes it).

Replies are matched to requests by ``rid``; events are kept by ``(event, gift_id)`` until
a caller takes them with :meth:`BlockingConnection.wait_event`. Nothing reconnects by
itself: a load scenario decides when to reconnect and times it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ClientMessage,
    CloseCode,
    Encoding,
    Error,
    ErrorCode,
    Event,
    Hello,
    ProtocolError,
    ServerMessage,
    Welcome,
    decode_server,
    encode,
)

#: Bytes read from the socket at once; several frames usually arrive together.
_RECV_BYTES = 65536

M = TypeVar("M", bound=ServerMessage)


class ConnectionLost(ConnectionError):
    """The connection closed (or failed) while a caller was waiting on it."""


class RequestFailed(Exception):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.code = error.code


@dataclasses.dataclass(frozen=True, slots=True)
class Arrival:
    """A server message and when the reader took it off the socket (clock seconds)."""

    at: float
    msg: ServerMessage
    size: int


class _Slot:
    """A single-use mailbox: the reader fills it, one waiter takes it."""

    __slots__ = ("arrival", "ready")

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.arrival: Arrival | None = None


class BlockingConnection:
    """One WebSocket connection of one user, speaking notecard protocol version 1."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        encoding: Encoding = Encoding.MSGPACK,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.url = url
        self.token = token
        self.encoding = encoding
        self.timeout_s = timeout_s
        self.clock = clock
        self.welcome: Welcome | None = None
        #: Stream position of the newest event received (for resuming after a reconnect).
        self.epoch: str | None = None
        self.offset: int | None = None
        self.close_code: int | None = None
        self._uri = parse_uri(url)
        self._proto = ClientProtocol(
            self._uri, subprotocols=[Subprotocol(encoding.subprotocol)], max_size=MAX_FRAME_BYTES
        )
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._slots_lock = threading.Lock()
        self._slots: dict[tuple[str, object], _Slot] = {}
        self._rids = itertools.count(1)
        self._partial: list[bytes] = []
        self._lost = threading.Event()

    # ------------------------------------------------------------ life
    def connect(self, *, epoch: str | None = None, offset: int | None = None) -> Arrival:
        """TCP connect, WebSocket handshake, ``hello``; returns the ``welcome`` as it arrived."""
        host, port = self._uri.host, self._uri.port
        sock = socket.create_connection((host, port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        try:
            self._handshake(sock)
            sock.settimeout(None)  # the reader blocks; waiters time out on their own events
            self._reader = threading.Thread(target=self._read_loop, name=f"nc-reader:{self.url}", daemon=True)
            self._reader.start()
            self.send(Hello(v=PROTOCOL_VERSION, token=self.token, epoch=epoch, offset=offset))
            arrival = self._take(("welcome", None), self.timeout_s)
        except BaseException:
            self.abort()
            raise
        welcome = arrival.msg
        if isinstance(welcome, Error):
            self.abort()
            raise RequestFailed(welcome)
        assert isinstance(welcome, Welcome)
        self.welcome = welcome
        if self.epoch != welcome.epoch or self.offset is None:
            self.epoch, self.offset = welcome.epoch, welcome.offset
        return arrival

    def _handshake(self, sock: socket.socket) -> None:
        proto = self._proto
        proto.send_request(proto.connect())
        self._flush()
        while True:
            data = sock.recv(_RECV_BYTES)
            if not data:
                proto.receive_eof()
                raise ConnectionLost("connection closed during the WebSocket handshake")
            proto.receive_data(data)
            events = proto.events_received()
            if events:
                break
        response = events[0]
        if proto.handshake_exc is not None:
            raise proto.handshake_exc
        if not isinstance(response, Response) or proto.state is not State.OPEN:
            raise ConnectionLost("WebSocket handshake failed")
        # Frames sent right after the handshake response (none today) are handled as usual.
        now = self.clock()
        for event in events[1:]:
            self._on_event(event, now)

    def close(self, code: int = CloseCode.NORMAL, wait_s: float = 2.0) -> None:
        """Closing handshake, then the socket. Safe to call twice."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError), self._send_lock:
            if self._proto.state is State.OPEN:
                self._proto.send_close(code)
                self._flush()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(wait_s)
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (as a crash or a network cut)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self._lost.set()
        self._wake_all()

    @property
    def alive(self) -> bool:
        return not self._lost.is_set()

    # ------------------------------------------------------------ sending
    def _flush(self) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        for chunk in self._proto.data_to_send():
            if chunk:
                sock.sendall(chunk)
            else:  # the protocol asks to half-close after a close frame
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)

    def send(self, msg: ClientMessage) -> float:
        """Send one message; returns the clock just before it was written."""
        frame = encode(msg, self.encoding)
        with self._send_lock:
            if self._proto.state is not State.OPEN:
                raise ConnectionLost("connection is not open")
            if isinstance(frame, bytes):
                self._proto.send_binary(frame)
            else:
                self._proto.send_text(frame.encode())
            sent = self.clock()
            try:
                self._flush()
            except OSError as exc:
                raise ConnectionLost(str(exc)) from exc
        return sent

    def next_rid(self) -> int:
        return next(self._rids)

    def request(self, build: Callable[[int], ClientMessage], expect: type[M],
                timeout_s: float | None = None) -> tuple[float, Arrival]:
        """Send ``build(rid)`` and wait for its reply; returns (sent_at, reply).

        An ``error`` reply raises :class:`RequestFailed`; a reply of another type than
        ``expect`` raises :class:`ProtocolError`.
        """
        rid = self.next_rid()
        key = ("reply", rid)
        self._slot(key)  # registered before sending: the reply may beat us back
        sent = self.send(build(rid))
        arrival = self._take(key, timeout_s)
        if isinstance(arrival.msg, Error):
            raise RequestFailed(arrival.msg)
        if not isinstance(arrival.msg, expect):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"unexpected reply {arrival.msg.TYPE} to request {rid}")
        return sent, arrival

    # ------------------------------------------------------------ waiting
    def wait_event(self, kind: str, gift_id: str, timeout_s: float | None = None) -> Arrival:
        """The ``event`` of ``kind`` (offer, outcome) about ``gift_id``, once it arrived."""
        return self._take((kind, gift_id), timeout_s)

    def _slot(self, key: tuple[str, object]) -> _Slot:
        with self._slots_lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
            return slot

    def _take(self, key: tuple[str, object], timeout_s: float | None) -> Arrival:
        slot = self._slot(key)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if not slot.ready.wait(timeout):
            with self._slots_lock:
                self._slots.pop(key, None)
            raise TimeoutError(f"no {key[0]} within {timeout}s")
        with self._slots_lock:
            self._slots.pop(key, None)
        if slot.arrival is None:
            raise ConnectionLost(f"connection closed (code {self.close_code}) while waiting for {key[0]}")
        return slot.arrival

    def _wake_all(self) -> None:
        with self._slots_lock:
            slots = list(self._slots.values())
        for slot in slots:
            slot.ready.set()

    # ------------------------------------------------------------ reading
    def _read_loop(self) -> None:
        proto = self._proto
        try:
            while True:
                sock = self._sock
                if sock is None:
                    return
                data = sock.recv(_RECV_BYTES)
                now = self.clock()
                if not data:
                    proto.receive_eof()
                    return
                proto.receive_data(data)
                for event in proto.events_received():
                    self._on_event(event, now)
                with self._send_lock:
                    if self._sock is not None:
                        self._flush()  # pongs and the echo of a close frame
                if proto.state is State.CLOSED:
                    return
        except (OSError, ConnectionLost):
            return
        finally:
            self.close_code = proto.close_code
            self._lost.set()
            self._wake_all()

    def _on_event(self, event: object, now: float) -> None:
        opcode = getattr(event, "opcode", None)
        if opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            return  # control frames: the sans-I/O protocol already handled them
        data = bytes(event.data)  # type: ignore[attr-defined]  # may be a bytearray
        if not event.fin:  # type: ignore[attr-defined]
            self._partial.append(data)
            return
        if self._partial:
            data = b"".join([*self._partial, data])
            self._partial.clear()
        if self.encoding is Encoding.MSGPACK:
            frame: bytes | str = data
        else:
            frame = data.decode("utf-8", "replace")
        try:
            msg = decode_server(frame, self.encoding)
        except ProtocolError:
            return  # a newer server's message: ignored, as the spec asks (section 15)
        arrival = Arrival(now, msg, len(data))
        if isinstance(msg, Welcome):
            key: tuple[str, object] = ("welcome", None)
        elif isinstance(msg, Event):
            self.epoch, self.offset = msg.epoch, msg.offset
            key = (msg.event, msg.gift.gift_id)
        elif (rid := getattr(msg, "rid", None)) is not None:
            key = ("reply", rid)
        elif isinstance(msg, Error):
            key = ("welcome", None)  # a refused hello (the only rid-less error a client waits on)
        else:
            return
        slot = self._slot(key)
        slot.arrival = arrival
        slot.ready.set()
