"""What a setting's value may be: its type and range, read from text and described in words.

A kind reads an environment variable's text (:meth:`Kind.parse`), checks a value however it
was given (:meth:`Kind.check`: the environment, a test building settings directly), and
says what it accepts (:attr:`Kind.expected`) in the same words for the error message, the
README's configuration table and ``notecard config``. Errors are :class:`ValueError` with
that text; the caller adds the variable's name.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class Kind(abc.ABC, Generic[T]):
    """Base: ``parse`` turns text into a value; ``check`` refuses a value out of range."""

    expected = "a value"

    @abc.abstractmethod
    def parse(self, raw: str) -> T:
        """The value ``raw`` names; ValueError naming what is expected when it names none."""

    def check(self, value: T) -> None:
        """Raise ValueError naming the range when ``value`` is out of it."""

    def show(self, value: T) -> str:
        """The value as it would be written in the environment."""
        return str(value)


class Text(Kind[str]):
    def __init__(self, pattern: str | None = None, expected: str = "text") -> None:
        self._pattern = re.compile(pattern) if pattern else None
        self.expected = expected

    def parse(self, raw: str) -> str:
        self.check(raw)
        return raw

    def check(self, value: str) -> None:
        if self._pattern is not None and not self._pattern.fullmatch(value):
            raise ValueError(f"expected {self.expected}")


class Secret(Text):
    """Text that ``notecard config`` never prints."""


class Integer(Kind[int]):
    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.expected = _range_text("an integer", minimum, maximum)

    def parse(self, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected {self.expected}") from None
        self.check(value)
        return value

    def check(self, value: int) -> None:
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise ValueError(f"expected {self.expected}")


class Number(Kind[float]):
    """A real number; ``above`` is an exclusive lower bound (a period must be above 0)."""

    def __init__(self, *, above: float | None = None, minimum: float | None = None) -> None:
        self.above, self.minimum = above, minimum
        if above is not None:
            self.expected = f"a number above {above:g}"
        else:
            self.expected = _range_text("a number", minimum, None)

    def parse(self, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected {self.expected}") from None
        self.check(value)
        return value

    def check(self, value: float) -> None:
        if (not math.isfinite(value) or (self.above is not None and value <= self.above)
                or (self.minimum is not None and value < self.minimum)):
            raise ValueError(f"expected {self.expected}")

    def show(self, value: float) -> str:
        return f"{value:g}"


class Port(Integer):
    def __init__(self) -> None:
        super().__init__(0, 65535)
        self.expected = "a port, 0 to 65535"


class Flag(Kind[bool]):
    expected = "true or false (also 1/0, yes/no, on/off)"

    def parse(self, raw: str) -> bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected {self.expected}")

    def show(self, value: bool) -> str:
        return "true" if value else "false"


class Choice(Kind[str]):
    """One of a closed set; ``fold`` reads the text in that case (log levels are upper case)."""

    def __init__(self, *choices: str, fold: Callable[[str], str] | None = None) -> None:
        self.choices = choices
        self._fold = fold
        self.expected = "one of " + ", ".join(choices)

    def parse(self, raw: str) -> str:
        value = self._fold(raw.strip()) if self._fold else raw.strip()
        self.check(value)
        return value

    def check(self, value: str) -> None:
        if value not in self.choices:
            raise ValueError(f"expected {self.expected}")


class Names(Kind[tuple[str, ...]]):
    """A comma-separated list of names of one pattern, at least one, no duplicates."""

    def __init__(self, pattern: str, expected: str) -> None:
        self._pattern = re.compile(pattern)
        self.expected = expected

    def parse(self, raw: str) -> tuple[str, ...]:
        value = tuple(part.strip() for part in raw.split(",") if part.strip())
        self.check(value)
        return value

    def check(self, value: tuple[str, ...]) -> None:
        bad = [name for name in value if not self._pattern.fullmatch(name)]
        if not value or bad or len(set(value)) != len(value):
            found = f" ({bad[0]!r} is not)" if bad else ""
            raise ValueError(f"expected {self.expected}{found}")

    def show(self, value: tuple[str, ...]) -> str:
        return ",".join(value)


class SecretNames(Names):
    """A comma-separated list of ``name:secret`` pairs that ``notecard config`` never prints."""


Network = IPv4Network | IPv6Network


class Networks(Kind[tuple[Network, ...]]):
    expected = "comma-separated CIDR networks, e.g. 10.0.0.0/8,::1"

    def parse(self, raw: str) -> tuple[Network, ...]:
        try:
            return tuple(ip_network(part.strip()) for part in raw.split(",") if part.strip())
        except ValueError as exc:
            raise ValueError(f"expected {self.expected}: {exc}") from None

    def show(self, value: tuple[Network, ...]) -> str:
        return ",".join(str(n) for n in value)


class HostPorts(Kind[tuple[tuple[str, int], ...]]):
    expected = "host:port[,host:port...]"

    def parse(self, raw: str) -> tuple[tuple[str, int], ...]:
        out = []
        for part in (p.strip() for p in raw.split(",")):
            host, sep, port = part.rpartition(":")
            if not part:
                continue
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ValueError(f"expected {self.expected} ({part!r} is not)")
            out.append((host, int(port)))
        return tuple(out)

    def show(self, value: tuple[tuple[str, int], ...]) -> str:
        return ",".join(f"{host}:{port}" for host, port in value)


class RedisUrl(Kind[str]):
    expected = "a redis://, rediss://, unix:// or redis+cluster:// URL"

    def parse(self, raw: str) -> str:
        self.check(raw.strip())
        return raw.strip()

    def check(self, value: str) -> None:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix", "redis+cluster") or not (parts.netloc or parts.path):
            raise ValueError(f"expected {self.expected}")

    def show(self, value: str) -> str:
        return redact_url(value)


class PostgresUrl(Kind[str]):
    """A libpq connection URL; shown with its password hidden."""

    expected = "a postgresql:// or postgres:// URL (postgresql://user:password@host:port/database)"

    def parse(self, raw: str) -> str:
        self.check(raw.strip())
        return raw.strip()

    def check(self, value: str) -> None:
        parts = urlsplit(value)
        # a host, or a socket folder given as ?host=/run/postgresql with a database path
        if parts.scheme not in ("postgresql", "postgres") or not (parts.netloc or parts.path.strip("/")):
            raise ValueError(f"expected {self.expected}")

    def show(self, value: str) -> str:
        return redact_url(value)


class JwksSource(Kind[str]):
    expected = "an https:// or http:// URL, or a file (a path or a file:// URL)"

    def parse(self, raw: str) -> str:
        self.check(raw.strip())
        return raw.strip()

    def check(self, value: str) -> None:
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.netloc:
            return
        if parts.scheme in ("", "file") and (parts.path or value):
            return
        raise ValueError(f"expected {self.expected}")

    @staticmethod
    def missing_file(value: str | None) -> str:
        """Why a file source cannot be read at start ("" when it is a URL or a file): a
        typo in a path is found before the node serves, not at the first RS256 token."""
        if not value or urlsplit(value).scheme in ("http", "https"):
            return ""
        path = Path(urlsplit(value).path if value.startswith("file:") else value)
        return "" if path.is_file() else f"no such file: {path}"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _range_text(noun: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{noun} from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f"{noun}, {minimum:g} or more"
    if maximum is not None:
        return f"{noun}, {maximum:g} or less"
    return noun


class PathKind(Kind[Path]):
    expected = "a folder path"

    def parse(self, raw: str) -> Path:
        return Path(raw)
