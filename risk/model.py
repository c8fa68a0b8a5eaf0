"""The trained classifier, read from a versioned file and evaluated with no library.

``notecard risk train`` fits a logistic regression (scikit-learn) on simulated, labelled
traffic and writes its standardisation, weights and threshold to risk/model.json; here a
decision is a dot product over the twelve features: microseconds, no service call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from risk.features import FEATURES

MODEL_FILE = Path(__file__).resolve().parent / "model.json"


class ModelError(ValueError):
    """A model file that does not read, or was made for other features."""


@dataclass(frozen=True, slots=True)
class Model:
    version: str
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    #: Scores at or above this are acted on (the low tier), unless a rule says more.
    threshold: float
    #: How it was trained and evaluated (docs/risk.md's model card).
    card: dict[str, Any]

    def contributions(self, x: dict[str, float]) -> list[tuple[str, float]]:
        return [(name, c * (_transform(x[name]) - m) / s)
                for name, m, s, c in zip(FEATURES, self.mean, self.scale, self.coef, strict=True)]

    def score(self, x: dict[str, float]) -> tuple[float, list[tuple[str, float]]]:
        """The probability of abuse and the features that pushed it most, strongest first."""
        parts = self.contributions(x)
        z = self.intercept + sum(v for _, v in parts)
        p = 1 / (1 + math.exp(-z)) if z > -700 else 0.0
        top = sorted(parts, key=lambda kv: -kv[1])[:3]
        return p, top

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "features": list(FEATURES), "mean": list(self.mean),
                "scale": list(self.scale), "coef": list(self.coef), "intercept": self.intercept,
                "threshold": self.threshold, "card": self.card}


def _transform(value: float) -> float:
    """Counts are heavy-tailed: the model sees log(1 + x)."""
    return math.log1p(max(0.0, value))


def transform_row(x: dict[str, float]) -> list[float]:
    return [_transform(x[name]) for name in FEATURES]


def load_model(path: Path = MODEL_FILE) -> Model:
    try:
        d = orjson.loads(path.read_bytes())
        if tuple(d["features"]) != FEATURES:
            raise ModelError(f"{path}: made for features {d['features']}, this version has {list(FEATURES)}")
        n = len(FEATURES)
        model = Model(version=str(d["version"]), mean=tuple(map(float, d["mean"])),
                      scale=tuple(float(s) or 1.0 for s in d["scale"]), coef=tuple(map(float, d["coef"])),
                      intercept=float(d["intercept"]), threshold=float(d["threshold"]), card=dict(d.get("card", {})))
        if not len(model.mean) == len(model.scale) == len(model.coef) == n:
            raise ModelError(f"{path}: expected {n} weights")
        return model
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{path}: {exc}") from None


def save_model(model: Model, path: Path = MODEL_FILE) -> None:
    path.write_bytes(orjson.dumps(model.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
