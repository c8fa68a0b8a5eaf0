"""Labelled traffic for training and evaluating the risk engine (docs/risk.md).

Five populations, over three simulated days:

- ``normal``: people. One device each (1 in 10 share a family device with one or two
  others), a home address block with few accounts, or (3 in 10) a carrier's shared block
  with dozens; a few friends they give to, now and then, at irregular times; they answer
  offers after seconds;
- ``farm`` (expected tier: limit): 6-12 accounts on one or two devices, giving to a few
  collectors at human-like times;
- ``ring`` (freeze): 15-25 accounts on their own devices behind one address block, giving
  mostly to each other;
- ``bot`` (ban): scripted senders: a gift every 20-60 s with a jitter under a second, or
  bursts; offers answered in a few hundred milliseconds;
- ``drip`` (limit, by the model): launderers passing value around a loop of 2-4 accounts on
  separate devices and addresses, a gift every couple of hours on a fixed schedule.

The numbers are assumptions, not measurements of a real platform: the model card says so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from risk.actions import Tier
from risk.features import Event

DAY_MS = 86_400_000
EXPECTED: dict[str, Tier] = {"farm": Tier.LIMIT, "ring": Tier.FREEZE, "bot": Tier.BAN, "drip": Tier.LIMIT}


@dataclass
class Traffic:
    events: list[Event] = field(default_factory=list)
    #: account -> population
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class _Account:
    name: str
    device: str
    ip: str
    human: bool


class Simulator:
    def __init__(self, seed: int, *, normals: int = 2000, farms: int = 20, rings: int = 10, bots: int = 100,
                 drips: int = 25) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.sizes = {"normal": normals, "farm": farms, "ring": rings, "bot": bots, "drip": drips}
        self.t = Traffic()
        self.accounts: dict[str, _Account] = {}
        self._n = 0

    def run(self) -> Traffic:
        normals = self._normals()
        for _ in range(self.sizes["farm"]):
            self._farm(normals)
        for _ in range(self.sizes["ring"]):
            self._ring()
        for _ in range(self.sizes["bot"]):
            self._bot(normals)
        for _ in range(self.sizes["drip"]):
            self._drip()
        self.t.events.sort(key=lambda e: e.ts)
        return self.t

    # ------------------------------------------------------------ building blocks
    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self.seed}x{self._n}"

    def _account(self, label: str, device: str, ip: str, human: bool = True) -> _Account:
        a = _Account(self._id(label[:2]), device, ip, human)
        self.accounts[a.name] = a
        self.t.labels[a.name] = label
        return a

    def _net(self) -> str:
        r = self.rng
        return f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}"

    def _hello(self, a: _Account, ts: int) -> None:
        self.t.events.append(Event("hello", a.name, a.device, a.ip, "main", ts))

    def _gift(self, s: _Account, r: _Account, ts: int, answer_ms: int) -> None:
        self.t.events.append(Event("send", s.name, s.device, s.ip, "main", ts, to=r.name))
        self.t.events.append(Event("accept", r.name, r.device, r.ip, "main", ts + answer_ms, to=s.name,
                                   waited_ms=answer_ms))

    def _human_answer(self) -> int:
        # seconds to minutes; now and then someone is quick
        return int(min(59_000, max(600, self.rng.lognormvariate(8.8, 0.8))))

    def _human_gaps(self, n: int, start: int) -> list[int]:
        out, t = [], start
        for _ in range(n):
            t += int(self.rng.expovariate(1 / (5 * 3_600_000)))
            out.append(t)
        return out

    # ------------------------------------------------------------ populations
    def _normals(self) -> list[_Account]:
        r = self.rng
        cgnat = [self._net() for _ in range(max(1, self.sizes["normal"] // 70))]
        people: list[_Account] = []
        while len(people) < self.sizes["normal"]:
            device = self._id("dev")
            net = r.choice(cgnat) if r.random() < 0.3 else self._net()
            sharing = 1 if r.random() < 0.9 else r.choice((2, 2, 2, 3))
            for _ in range(min(sharing, self.sizes["normal"] - len(people))):
                people.append(self._account("normal", device, f"{net}.{r.randint(1, 254)}"))
        for p in people:
            friends = r.sample(people, k=min(len(people), r.randint(2, 8)))
            start = r.randint(0, DAY_MS)
            self._hello(p, start)
            times = self._human_gaps(r.randint(1, 15), start)
            for i, ts in enumerate(times):
                if i and r.random() < 0.3:
                    self._hello(p, ts - 1000)
                friend = r.choice(friends)
                if friend is not p:
                    self._gift(p, friend, ts, self._human_answer())
        return people

    def _farm(self, normals: list[_Account]) -> None:
        r = self.rng
        devices = [self._id("dev") for _ in range(r.choice((1, 1, 2)))]
        net = self._net()
        collectors = r.sample(normals, k=2)
        start = r.randint(0, DAY_MS)
        for i in range(r.randint(6, 12)):
            a = self._account("farm", devices[i % len(devices)], f"{net}.{r.randint(1, 254)}")
            ts0 = start + i * r.randint(60_000, 600_000)
            self._hello(a, ts0)
            for ts in self._human_gaps(r.randint(10, 20), ts0):
                self._gift(a, r.choice(collectors), ts, self._human_answer())

    def _ring(self) -> None:
        r = self.rng
        net = self._net()
        members = [self._account("ring", self._id("dev"), f"{net}.{r.randint(1, 254)}")
                   for _ in range(r.randint(15, 25))]
        start = r.randint(0, DAY_MS)
        for a in members:
            ts0 = start + r.randint(0, 3_600_000)
            self._hello(a, ts0)
            for ts in self._human_gaps(r.randint(10, 20), ts0):
                self._gift(a, r.choice([m for m in members if m is not a]), ts, self._human_answer())

    def _bot(self, normals: list[_Account]) -> None:
        r = self.rng
        a = self._account("bot", self._id("dev"), f"{self._net()}.{r.randint(1, 254)}", human=False)
        targets = r.sample(normals, k=r.randint(1, 30))
        ts = r.randint(0, DAY_MS)
        self._hello(a, ts)
        bursty = r.random() < 0.3
        period = r.randint(20_000, 60_000)
        for _ in range(r.randint(12, 40)):
            ts += r.randint(500, 3_000) if bursty else period + r.randint(-800, 800)
            self._gift(a, r.choice(targets), ts, self._human_answer())
            if r.random() < 0.5:  # its own offers, answered by the script
                fake = _Account(r.choice(targets).name, "x", "", True)
                self.t.events.append(Event("accept", a.name, a.device, a.ip, "main", ts + 200, to=fake.name,
                                           waited_ms=r.randint(80, 600)))

    def _drip(self) -> None:
        r = self.rng
        loop = [self._account("drip", self._id("dev"), f"{self._net()}.{r.randint(1, 254)}")
                for _ in range(r.randint(2, 4))]
        period = r.randint(1, 4) * 3_600_000
        start = r.randint(0, DAY_MS)
        for i, a in enumerate(loop):
            self._hello(a, start + i)
        for k in range(r.randint(12, 20) * len(loop)):
            s, nxt = loop[k % len(loop)], loop[(k + 1) % len(loop)]
            ts = start + k * period // len(loop) + r.randint(-300_000, 300_000)
            self._gift(s, nxt, ts, r.randint(900, 4_000))
