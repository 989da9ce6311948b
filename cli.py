"""The ``slimlens`` command: parses arguments, calls the library, prints progress and one-line errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


# ---- zoo -------------------------------------------------------------------------------------------


def _metric_text(card) -> str:
    value = card.metrics[card.primary_metric]
    return f"{card.primary_metric}={value:.4f}" if isinstance(value, float) else f"{card.primary_metric}={value}"


def cmd_zoo_list(args: argparse.Namespace) -> int:
    import zoo

    rows = []
    for name in zoo.list_models():
        card = zoo.card(name, args.weights_root)
        rows.append((name, card.family, f"{card.params:,}", f"{card.weights['bytes'] / 1024:,.0f} KiB", _metric_text(card)))
    if args.json:
        print(json.dumps([dict(zip(("name", "family", "params", "size", "metric"), r)) for r in rows], indent=2))
        return 0
    header = ("name", "family", "params", "size", "metric (bundled test split)")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_zoo_info(args: argparse.Namespace) -> int:
    import zoo

    print(json.dumps(zoo.card(args.name, args.weights_root).to_dict(), indent=2))
    return 0


def _tolerance(metric: str, value: float) -> float:
    # Same weights and data give the same predictions up to float summation order across thread counts.
    return 0.002 if metric in ("accuracy", "macro_f1", "confident_fraction") else max(1e-4, 0.01 * abs(value))


def cmd_zoo_eval(args: argparse.Namespace) -> int:
    import zoo

    names = zoo.list_models() if args.all else [args.name]
    if not names or names == [None]:
        raise zoo.SlimlensError("name a zoo model or pass --all")
    failures = 0
    for name in names:
        card = zoo.card(name, args.weights_root)
        now = zoo.evaluate(name, data_root=args.data_root, weights_root=args.weights_root)
        metric = card.primary_metric
        if args.data_root is not None:
            print(f"{name:20s} {metric} {now[metric]:.4f} on {args.data_root} (card: {card.metrics[metric]:.4f} on the bundled split)")
            continue
        diff = now[metric] - card.metrics[metric]
        ok = abs(diff) <= _tolerance(metric, card.metrics[metric])
        failures += not ok
        print(f"{name:20s} {metric:9s} now {now[metric]:.4f}  card {card.metrics[metric]:.4f}  diff {diff:+.4f}  {'ok' if ok else 'MISMATCH'}")
    return 1 if failures else 0


def cmd_zoo_train(args: argparse.Namespace) -> int:
    import zoo
    from zoo.training import train

    names = zoo.list_models() if args.all else [args.name]
    if args.all:  # the GAN's judge is seed-cnn, and each GAN half trains with the other
        names = [n for n in names if zoo.spec(n).task != "discrimination"]
        names.remove("seed-cnn")
        names.insert(0, "seed-cnn")
    out = Path(args.out)
    for name in names:
        old = None
        try:
            old = zoo.card(name)
        except zoo.SlimlensError:
            pass
        for card in train(name, out=out, quick=args.quick, data_root=args.data_root, progress=lambda m: _say(args, m)):
            metric = card.primary_metric
            committed = zoo.card(card.name) if old is not None else None
            ref = f" (committed card: {committed.metrics[metric]:.4f})" if committed else ""
            print(f"{card.name}: {metric} {card.metrics[metric]:.4f}{ref}, {card.params:,} params, "
                  f"{card.training['seconds']:.0f} s → {out / card.weights['file']}")
    return 0


def cmd_zoo_samples(args: argparse.Namespace) -> int:
    import zoo
    from zoo.samples import save_sample_grid

    path = save_sample_grid(args.name, Path(args.out), n=args.n, seed=args.seed, weights_root=args.weights_root)
    print(path)
    return 0


def _add_zoo(sub: argparse._SubParsersAction) -> None:
    zoo_parser = sub.add_parser("zoo", help="list, inspect, evaluate and retrain the model zoo")
    zsub = zoo_parser.add_subparsers(dest="zoo_command", required=True)
    root_help = "folder of retrained weights and cards (default: the ones shipped with slimlens)"

    p = zsub.add_parser("list", help="a table of the zoo's models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--weights-root", help=root_help)
    p.set_defaults(func=cmd_zoo_list)

    p = zsub.add_parser("info", help="print a model's card")
    p.add_argument("name")
    p.add_argument("--weights-root", help=root_help)
    p.set_defaults(func=cmd_zoo_info)

    p = zsub.add_parser("eval", help="recompute a model's metric now and compare it with its card")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="every zoo model")
    p.add_argument("--data-root", help="a torchvision-format MNIST folder instead of the bundled digits")
    p.add_argument("--weights-root", help=root_help)
    p.set_defaults(func=cmd_zoo_eval)

    p = zsub.add_parser("train", help="retrain a model from scratch with its card's recipe and seed")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="every zoo model, seed-cnn first (it judges the GAN)")
    p.add_argument("--out", default="slimlens-zoo", help="folder for the new weights and cards (default: ./slimlens-zoo)")
    p.add_argument("--quick", action="store_true", help="one short epoch on 512 images: a smoke test")
    p.add_argument("--data-root", help="a torchvision-format MNIST folder instead of the bundled digits")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_zoo_train)

    p = zsub.add_parser("samples", help="draw a grid of a generator's samples as a PNG")
    p.add_argument("name", nargs="?", default="dcgan-g")
    p.add_argument("--out", default="dcgan-samples.png")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-root", help=root_help)
    p.set_defaults(func=cmd_zoo_samples)


# ---- entry point -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``slimlens`` argument parser."""
    parser = argparse.ArgumentParser(prog="slimlens", description="Make neural networks smaller and faster, and show what they look at.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_zoo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``slimlens`` with ``argv``; user errors become one line on stderr and exit code 2."""
    from zoo.errors import SlimlensError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SlimlensError as exc:
        print(f"slimlens: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("slimlens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
