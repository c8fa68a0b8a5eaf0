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

The session's rules (hello and resume, request ids and which reply answers which request,
offsets, epochs, offer de-duplication) are the sans-I/O :class:`~protocol.session.ClientSession`
the asyncio SDK drives too; this class moves its frames over a socket. Replies are kept by
``rid`` and events by ``(event, gift_id)`` until a caller takes them with
:meth:`BlockingConnection.request` and :meth:`BlockingConnection.wait_event`. Nothing
reconnects by itself: a load scenario decides when to reconnect and times it.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    Answered,
    ClientMessage,
    ClientSession,
    CloseCode,
    Encoding,
    Error,
    ErrorCode,
    Gift,
    OfferReceived,
    OutcomeReceived,
    ProtocolError,
    ServerError,
    ServerMessage,
    SessionEvent,
    Welcome,
    Welcomed,
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
    """A server message (for offers and outcomes: the gift) and when the reader took it off
    the socket (clock seconds)."""

    at: float
    msg: ServerMessage | Gift
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
        #: The session's state, sans I/O; a new one per connect (with its resume position).
        self.session = ClientSession(encoding)
        #: Guards the session: the reader thread and the callers' threads both use it.
        self._session_lock = threading.Lock()
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
        self._partial: list[bytes] = []
        self._lost = threading.Event()

    @property
    def welcome(self) -> Welcome | None:
        return self.session.welcome

    @property
    def epoch(self) -> str | None:
        """Stream position of the newest event processed (for resuming after a reconnect)."""
        return self.session.epoch

    @property
    def offset(self) -> int | None:
        return self.session.offset

    # ------------------------------------------------------------ life
    def connect(self, *, epoch: str | None = None, offset: int | None = None) -> Arrival:
        """TCP connect, WebSocket handshake, ``hello``; returns the ``welcome`` as it arrived."""
        host, port = self._uri.host, self._uri.port
        self.session = ClientSession(self.encoding, epoch=epoch, offset=offset)
        sock = socket.create_connection((host, port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        try:
            self._handshake(sock)
            sock.settimeout(None)  # the reader blocks; waiters time out on their own events
            self._reader = threading.Thread(target=self._read_loop, name=f"nc-reader:{self.url}", daemon=True)
            self._reader.start()
            with self._session_lock:
                self.session.connect(self.token)
                frames = self.session.data_to_send()
            self._write(frames)
            arrival = self._take(("welcome", None), self.timeout_s)
        except BaseException:
            self.abort()
            raise
        if isinstance(arrival.msg, Error):
            self.abort()
            raise RequestFailed(arrival.msg)
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

    def _write(self, frames: list[bytes | str]) -> float:
        """Write frames the session made; returns the clock just before they were written."""
        with self._send_lock:
            if self._proto.state is not State.OPEN:
                raise ConnectionLost("connection is not open")
            for frame in frames:
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

    def request(self, build: Callable[[int], ClientMessage], expect: type[M],
                timeout_s: float | None = None) -> tuple[float, Arrival]:
        """Send ``build(rid)`` and wait for its reply; returns (sent_at, reply).

        An ``error`` reply raises :class:`RequestFailed`; a reply of another type than
        ``expect`` raises :class:`ProtocolError`.
        """
        with self._session_lock:
            call = self.session.request(build)
            key = ("reply", call.rid)
            self._slot(key)  # registered before sending: the reply may beat us back
            frames = self.session.data_to_send()
        try:
            sent = self._write(frames)
            arrival = self._take(key, timeout_s)
        finally:
            with self._session_lock:
                self.session.forget(call)
        if isinstance(arrival.msg, Error):
            raise RequestFailed(arrival.msg)
        if not isinstance(arrival.msg, expect):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"unexpected reply {arrival.msg.TYPE} to request {call.rid}")
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
        with self._session_lock:
            self.session.receive(frame)  # a frame it cannot read is ignored (section 15)
            events = self.session.events_received()
        for received in events:
            key = _key_of(received, self.session.welcome is None)
            if key is not None:
                slot = self._slot(key[0])
                slot.arrival = Arrival(now, key[1], len(data))
                slot.ready.set()


def _key_of(event: SessionEvent, before_welcome: bool) -> tuple[tuple[str, object], ServerMessage | Gift] | None:
    """The mailbox a session event goes to, with the message a waiter gets."""
    if isinstance(event, Welcomed):
        return ("welcome", None), event.welcome
    if isinstance(event, Answered):
        return ("reply", event.call.rid), event.reply
    if isinstance(event, OfferReceived):
        return ("offer", event.gift.gift_id), event.gift
    if isinstance(event, OutcomeReceived):
        return ("outcome", event.gift.gift_id), event.gift
    if isinstance(event, ServerError) and before_welcome:
        return ("welcome", None), event.error  # a refused hello
    return None
