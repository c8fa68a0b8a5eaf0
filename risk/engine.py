"""The decision: rules for the three tiers, then the model (docs/risk.md).

Rules, strongest tier first (each can be switched off by an operator, ``notecard admin risk``):

- ``script``   -> ban:    machine-regular timing (gap variation under 0.05 over 6+ sends),
                          bulk sending (8+ sends in a minute), or answers faster than a person
                          (4+ answers, 80 % within 1.5 s);
- ``ip_ring``  -> freeze: an address block with 10+ accounts on 6+ devices, and the account
                          gives mostly (75 %+, 4+ sends) to accounts in the same block;
- ``device_farm`` -> limit: 4+ accounts on the account's device;
- ``model``    -> limit:  from the 3rd send on, the classifier's score at or above its threshold.

In shadow mode (per rule, or for everything) a decision is made, audited and counted but not
applied: an operator tries a rule on live traffic before enforcing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from risk.actions import SEVERITY, Tier
from risk.model import Model

#: The model acts on an account from its this-many-th send on: one or two gifts say too little.
MODEL_MIN_SENDS = 3
RULES: dict[str, Tier] = {"script": Tier.BAN, "ip_ring": Tier.FREEZE, "device_farm": Tier.LIMIT,
                          "model": Tier.LIMIT}


@dataclass(frozen=True, slots=True)
class Switches:
    """What operators set (``nc:{cfg}:risk``): rules off, rules in shadow, all in shadow."""

    shadow: bool = False
    off: frozenset[str] = frozenset()
    shadow_rules: frozenset[str] = frozenset()

    def mode(self, rule: str) -> str:
        if rule in self.off:
            return "off"
        return "shadow" if self.shadow or rule in self.shadow_rules else "enforce"


@dataclass(frozen=True, slots=True)
class Decision:
    tier: Tier
    rule: str
    score: float
    top: list[tuple[str, float]]
    model_version: str
    #: The tier the rules would give in shadow mode, not applied.
    shadow_tier: Tier = Tier.NONE
    shadow_rule: str = ""
    hits: tuple[str, ...] = field(default=())


def rule_hits(x: dict[str, float], score: float, model: Model) -> list[str]:
    hits = []
    if ((x["sends"] >= 6 and x["gap_cv"] < 0.05) or x["burst"] >= 8
            or (x["fast_accepts"] >= 0.8 and x.get("answers", 4) >= 4)):
        hits.append("script")
    if x["net_accts"] >= 10 and x["net_devs"] >= 6 and x["sends"] >= 4 and x["same_net"] >= 0.75:
        hits.append("ip_ring")
    if x["dev_accts"] >= 4:
        hits.append("device_farm")
    if x["sends"] >= MODEL_MIN_SENDS and score >= model.threshold:
        hits.append("model")
    return hits


def decide(x: dict[str, float], model: Model, switches: Switches) -> Decision:
    score, top = model.score(x)
    hits = rule_hits(x, score, model)
    enforced = [r for r in hits if switches.mode(r) == "enforce"]
    shadowed = [r for r in hits if switches.mode(r) == "shadow"]
    rule = _strongest(enforced)
    shadow_rule = _strongest(shadowed)
    return Decision(tier=RULES[rule] if rule else Tier.NONE, rule=rule, score=score, top=top,
                    model_version=model.version, shadow_tier=RULES[shadow_rule] if shadow_rule else Tier.NONE,
                    shadow_rule=shadow_rule, hits=tuple(hits))


def _strongest(rules: list[str]) -> str:
    return max(rules, key=lambda r: SEVERITY[RULES[r]], default="")
