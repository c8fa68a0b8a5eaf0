"""``notecard risk``: run the scorer, train and evaluate the model (docs/risk.md).

    notecard risk run [--name NAME] [--metrics-port PORT]   score the gateway's events (Redis from NOTECARD_*)
    notecard risk train [--seed N] [--out FILE]              fit the model on simulated traffic
    notecard risk eval [--seed N] [--model FILE] [--json]    rules + model on traffic of another seed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from redis.exceptions import RedisError

from risk.model import MODEL_FILE, ModelError, load_model, save_model

#: The seed `notecard risk train` uses by default; eval refuses to report on it.
TRAIN_SEED = 1
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notecard risk", description="the risk engine (docs/risk.md)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="score the gateway's risk events (a consumer in the `scorers` group)")
    run.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}", help="consumer name in the group")
    run.add_argument("--model", type=Path, default=MODEL_FILE, help="model file (default: the one in the package)")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    train = sub.add_parser("train", help="fit the classifier on simulated, labelled traffic")
    train.add_argument("--seed", type=int, default=TRAIN_SEED, help=f"simulation seed (default {TRAIN_SEED})")
    train.add_argument("--out", type=Path, default=MODEL_FILE, help="where to write the model")
    train.add_argument("--version", help="model version (default risk-lr-<seed>)")
    ev = sub.add_parser("eval", help="precision/recall per tier and the normal users' false-positive rate")
    ev.add_argument("--seed", type=int, required=True, help="simulation seed; not the training seed")
    ev.add_argument("--model", type=Path, default=MODEL_FILE, help="model file")
    ev.add_argument("--json", action="store_true", help="print the numbers as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return asyncio.run(_train(args))
        if args.command == "eval":
            return asyncio.run(_eval(args))
        return asyncio.run(_run(args))
    except ModelError as exc:
        print(f"notecard risk: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _train(args: argparse.Namespace) -> int:
    from risk.evaluate import train

    try:
        model, card = await train(args.seed, args.version or f"risk-lr-{args.seed}")
    except ImportError:
        print("notecard risk train needs scikit-learn: pip install 'notecard[risk]'", file=sys.stderr)
        return 1
    save_model(model, args.out)
    print(f"wrote {args.out}: version {model.version}, threshold {model.threshold:.4f}, "
          f"{card['events']} training events ({card['positives']} from bad accounts)")
    return 0


async def _eval(args: argparse.Namespace) -> int:
    from risk.evaluate import evaluate, format_report

    model = load_model(args.model)
    if model.card.get("trained_on_seed") == args.seed:
        print(f"notecard risk eval: seed {args.seed} is the model's training seed; use another", file=sys.stderr)
        return 2
    report = await evaluate(args.seed, model)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else format_report(report))
    return 0


async def _run(args: argparse.Namespace) -> int:
    from clearing.keys import KeySchema
    from gateway.config import ConfigError, GatewaySettings
    from gateway.redis_client import close_store, connect_store
    from risk.scorer import LINGER_S, RiskMetrics, Scorer

    try:
        settings = GatewaySettings.from_env()
    except ConfigError as exc:
        print(f"notecard risk: configuration error: {exc}", file=sys.stderr)
        return 2
    model = load_model(args.model)
    metrics = RiskMetrics()
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, registry=metrics.registry)
    store = await connect_store(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scorer = Scorer(store.general, KeySchema(), model, name=args.name, metrics=metrics)
    try:
        print(f"notecard risk: scoring as {args.name} with model {model.version}", file=sys.stderr)
        delay = RETRY_MIN_S
        while not stop.is_set():
            # An unreachable Redis is waited for: the events stay in the stream meanwhile.
            try:
                await scorer.ensure_group()
                while not stop.is_set():
                    await scorer.step()
                    if not scorer.full:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), LINGER_S)
            except (RedisError, OSError) as exc:
                print(f"notecard risk: redis unavailable ({exc}); retrying in {delay:g} s", file=sys.stderr)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(RETRY_MAX_S, delay * 2)
    finally:
        with contextlib.suppress(Exception):
            await close_store(store)
    return 0
