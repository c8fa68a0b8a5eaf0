"""``notecard risk train`` and ``notecard risk eval``: fit the model on simulated traffic of
one seed, evaluate rules + model on traffic of another (docs/risk.md)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from clearing.keys import KeySchema
from risk.actions import SEVERITY, Tier
from risk.engine import MODEL_MIN_SENDS, Switches, decide
from risk.features import FEATURES, FeatureState, MemoryBackend
from risk.model import Model, transform_row
from risk.simulate import EXPECTED, Simulator, Traffic

#: Bad accounts count as caught when actioned by their this-many-th gift (the issue's bar).
WITHIN_GIFTS = 10
NO_SWITCHES = Switches()
#: The share of normal users the model alone may touch on the training traffic.
MODEL_FPR_BUDGET = 0.002


@dataclass
class AccountResult:
    label: str
    sends: int = 0
    #: The send count when the account was first actioned (0: before its first gift), or None.
    actioned_at: int | None = None
    tier: Tier = Tier.NONE
    max_score: float = 0.0


@dataclass
class Replay:
    accounts: dict[str, AccountResult] = field(default_factory=dict)
    rows: list[tuple[list[float], int, str]] = field(default_factory=list)
    decide_s: list[float] = field(default_factory=list)


def untrained_model() -> Model:
    n = len(FEATURES)
    return Model("untrained", (0.0,) * n, (1.0,) * n, (0.0,) * n, -50.0, 2.0, {})


async def replay(traffic: Traffic, model: Model, switches: Switches = NO_SWITCHES, *, keep_rows: bool = False
                 ) -> Replay:
    """Every event through the live scorer's features and decision, on a memory backend."""
    state = FeatureState(MemoryBackend(), KeySchema())
    out = Replay({name: AccountResult(label) for name, label in traffic.labels.items()})
    for ev in traffic.events:
        acc = out.accounts.get(ev.user)
        if acc is None:
            continue
        x = (await state.observe(ev)).x
        if ev.kind == "send":
            acc.sends += 1
        started = time.perf_counter()
        d = decide(x, model, switches)
        out.decide_s.append(time.perf_counter() - started)
        acc.max_score = max(acc.max_score, d.score)
        if keep_rows:
            out.rows.append((transform_row(x), 0 if acc.label == "normal" else 1, ev.user))
        if d.tier is not Tier.NONE:
            if acc.actioned_at is None:
                acc.actioned_at = acc.sends
            if SEVERITY[d.tier] > SEVERITY[acc.tier]:
                acc.tier = d.tier
    return out


async def train(seed: int, version: str) -> tuple[Model, dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    traffic = Simulator(seed).run()
    rows = (await replay(traffic, untrained_model(), keep_rows=True)).rows
    xs = [r[0] for r in rows]
    ys = [r[1] for r in rows]
    scaler = StandardScaler().fit(xs)
    clf = LogisticRegression(class_weight="balanced", max_iter=2000, C=1.0).fit(scaler.transform(xs), ys)
    model = Model(version=version, mean=tuple(float(v) for v in scaler.mean_),
                  scale=tuple(float(v) or 1.0 for v in scaler.scale_), coef=tuple(float(v) for v in clf.coef_[0]),
                  intercept=float(clf.intercept_[0]), threshold=1.0, card={})
    # The threshold: the smallest that touches at most MODEL_FPR_BUDGET of the normal users
    # of the training traffic through the model alone.
    best: dict[str, float] = {}
    sends = FEATURES.index("sends")
    for x, y, user in rows:
        plain = _untransform(x)
        if y == 0 and plain[sends] >= MODEL_MIN_SENDS - 0.01:
            p = model.score(dict(zip(FEATURES, plain, strict=True)))[0]
            best[user] = max(best.get(user, 0.0), p)
    scores = sorted(best.values()) or [0.5]
    cut = scores[min(len(scores) - 1, int(len(scores) * (1 - MODEL_FPR_BUDGET)))]
    threshold = min(0.999, max(0.5, cut + 1e-6))
    card = {"trained_on_seed": seed, "events": len(rows), "positives": sum(ys), "library": "scikit-learn "
            + _sklearn_version(), "estimator": "LogisticRegression(class_weight=balanced, C=1.0) on log1p features, "
            "standardised", "threshold_rule": f"touches <= {MODEL_FPR_BUDGET:.1%} of training normal users"}
    model = Model(model.version, model.mean, model.scale, model.coef, model.intercept, threshold, card)
    return model, card


def _untransform(row: list[float]) -> list[float]:
    import math

    return [math.expm1(v) for v in row]


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


async def evaluate(seed: int, model: Model, switches: Switches = NO_SWITCHES) -> dict[str, Any]:
    traffic = Simulator(seed).run()
    result = await replay(traffic, model, switches)
    accounts = result.accounts.values()
    table = []
    for tier in (Tier.LIMIT, Tier.FREEZE, Tier.BAN):
        expected = [a for a in accounts if EXPECTED.get(a.label) is tier]
        caught = [a for a in expected if a.actioned_at is not None and a.actioned_at <= WITHIN_GIFTS]
        acted = [a for a in accounts if a.tier is tier]
        correct = [a for a in acted if a.label != "normal"]
        table.append({"tier": tier.value, "expected": len(expected), "caught_within_10": len(caught),
                      "recall": _ratio(len(caught), len(expected)), "actioned": len(acted),
                      "precision": _ratio(len(correct), len(acted))})
    bad = [a for a in accounts if a.label != "normal"]
    normal = [a for a in accounts if a.label == "normal"]
    touched = [a for a in normal if a.tier is not Tier.NONE]
    per_label = {label: _ratio(sum(1 for a in bad if a.label == label and a.actioned_at is not None
                                   and a.actioned_at <= WITHIN_GIFTS),
                               sum(1 for a in bad if a.label == label)) for label in EXPECTED}
    times = sorted(result.decide_s)
    return {
        "seed": seed, "model": model.version, "events": len(traffic.events), "tiers": table,
        "bad_accounts": len(bad),
        "bad_recall_within_10": _ratio(sum(1 for a in bad if a.actioned_at is not None
                                           and a.actioned_at <= WITHIN_GIFTS), len(bad)),
        "recall_by_population": per_label,
        "normal_users": len(normal), "normal_touched": len(touched), "normal_fpr": _ratio(len(touched), len(normal)),
        "decide_p50_ms": 1000 * statistics.median(times), "decide_p99_ms": 1000 * times[int(len(times) * 0.99)],
    }


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def format_report(r: dict[str, Any]) -> str:
    lines = [f"risk eval: seed {r['seed']}, model {r['model']}, {r['events']} events, "
             f"{r['bad_accounts']} bad accounts, {r['normal_users']} normal users", "",
             "| tier | expected accounts | caught within 10 gifts | recall | actioned at this tier | precision |",
             "|---|---|---|---|---|---|"]
    for t in r["tiers"]:
        lines.append(f"| {t['tier']} | {t['expected']} | {t['caught_within_10']} | {t['recall']:.1%} | "
                     f"{t['actioned']} | {t['precision']:.1%} |")
    lines += ["", "recall within 10 gifts by population: "
              + ", ".join(f"{k} {v:.1%}" for k, v in r["recall_by_population"].items()),
              f"bad accounts actioned within their first 10 gifts: {r['bad_recall_within_10']:.2%} (target >= 95 %)",
              f"normal users touched: {r['normal_touched']} of {r['normal_users']} = {r['normal_fpr']:.2%} "
              "(target <= 0.5 %)",
              f"decision time per event: p50 {r['decide_p50_ms']:.3f} ms, p99 {r['decide_p99_ms']:.3f} ms "
              "(target p99 <= 2 ms)"]
    return "\n".join(lines) + "\n"
