"""The ``slimlens`` command: parses arguments, calls the library, prints progress and one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

EXIT_BAD_INPUT = 2
MAX_THREADS = 1024  # far past any CPU we time on; 999999 aborted the process natively, leaving its staging folder
MAX_SEED = 2**32 - 1  # NumPy's and torch's seeds both take it; a larger one was a torch traceback


def _bounded_int(low: int, high: int, what: str):
    """An argparse type: a whole number from ``low`` to ``high``, refused in argparse's own one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give {what} from {low} to {high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {what} from {low} to {high}")
        return value

    return parse


seed_arg = _bounded_int(0, MAX_SEED, "a seed")
threads_arg = _bounded_int(1, MAX_THREADS, "a thread count")


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument is one line naming the fix (argparse prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; '{self.prog} --help' lists the options\n")


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False) or message.startswith("warning:"):  # --quiet drops progress, never a warning
        print(message, file=sys.stderr, flush=True)


# ---- zoo -------------------------------------------------------------------------------------------


def _metric_text(card) -> str:
    value = card.metrics[card.primary_metric]
    return f"{card.primary_metric}={value:.4f}" if isinstance(value, float) else f"{card.primary_metric}={value}"


def cmd_zoo_list(args: argparse.Namespace) -> int:
    """Print the zoo as a table (or JSON): name, family, params, size, metric."""
    import zoo

    cards = [zoo.card(name, args.weights_root) for name in zoo.list_models()]
    if args.json:  # for machines: raw numbers, and only the scalar metrics (`zoo info` has the per-class lists)
        print(json.dumps([{"name": c.name, "family": c.family, "params": c.params, "size_bytes": c.weights["bytes"],
                           "primary_metric": c.primary_metric,
                           "metrics": {k: v for k, v in c.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}}
                          for c in cards], indent=2))
        return 0
    rows = [(c.name, c.family, f"{c.params:,}", f"{c.weights['bytes'] / 1024:,.0f} KiB", _metric_text(c)) for c in cards]
    header = ("name", "family", "params", "size", "metric (bundled test split)")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_zoo_info(args: argparse.Namespace) -> int:
    """Print a zoo model's card as JSON."""
    import zoo

    print(json.dumps(zoo.card(args.name, args.weights_root).to_dict(), indent=2))
    return 0


def _tolerance(metric: str, value: float) -> float:
    # Same weights and data give the same predictions up to float summation order across thread counts.
    return 0.002 if metric in ("accuracy", "macro_f1", "confident_fraction") else max(1e-4, 0.01 * abs(value))


def _one_model_or_all(args: argparse.Namespace, missing: str) -> list[str]:
    """The zoo models a command names: NAME or --all; neither or both is refused (``missing`` says what to do)."""
    import zoo

    if args.all and args.name is not None:  # nothing silently ignored
        raise zoo.SlimlensError("name a zoo model or pass --all, not both")
    if not args.all and args.name is None:
        raise zoo.SlimlensError(missing)
    return zoo.list_models() if args.all else [args.name]


def cmd_zoo_eval(args: argparse.Namespace) -> int:
    """Recompute zoo metrics now and compare them with the cards; exit 1 on a mismatch."""
    import zoo

    names = _one_model_or_all(args, "name a zoo model or pass --all")
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
    """Retrain zoo models from scratch with their recipes and seeds."""
    import zoo
    from zoo.training import train

    names = _one_model_or_all(args, "name a zoo model to train (`slimlens zoo list` shows them) or pass --all")
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


def _methods_arg(text: str | None) -> list[str] | None:
    """--methods as a list; None (the defaults) only when it was not given: an empty one is a mistake, not a request for the defaults."""
    if text is None:
        return None
    from explain.errors import ExplainError

    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ExplainError("--methods is empty; name at least one, e.g. --methods saliency, or leave it out for the defaults")
    return methods


def cmd_zoo_samples(args: argparse.Namespace) -> int:
    """Write a PNG grid of a generator's samples."""
    from zoo.samples import save_sample_grid

    path = save_sample_grid(args.name, Path(args.out), n=args.n, seed=args.seed, weights_root=args.weights_root)
    print(path)
    return 0


def cmd_steps(args: argparse.Namespace) -> int:
    """Print every recipe step (or one) with the families it takes and its settings' defaults."""
    from compress.steps import describe_step, list_steps

    for name in [args.step] if args.step else list_steps():
        info = describe_step(name)
        families = ", ".join(info["families"]) if info["families"] else "every family"
        print(f"{name}: {info['about']} ({families})")
        if args.step or args.verbose:
            for key, default in info["settings"].items():
                print(f"    {key} = {default!r}")
    if not args.step and not args.verbose:
        print("\nslimlens steps NAME lists a step's settings and defaults; -v lists them for every step")
    return 0


def _add_steps(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("steps", help="list the recipe steps, the model families each takes, and their settings")
    p.add_argument("step", nargs="?", help="one step's settings and their defaults")
    p.add_argument("-v", "--verbose", action="store_true", help="every step's settings")
    p.set_defaults(func=cmd_steps)


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
    p.add_argument("--out", default="dcgan-samples.png", help="the PNG file to write (default: ./dcgan-samples.png)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--weights-root", help=root_help)
    p.set_defaults(func=cmd_zoo_samples)


# ---- compress --------------------------------------------------------------------------------------


def _builder_path(model: str) -> str | None:
    """The folder a user's ``package.module:function`` was imported from, when it needs PYTHONPATH to be found again."""
    import importlib.util
    import sysconfig

    if ":" not in model:
        return None
    found = importlib.util.find_spec(model.partition(":")[0].split(".")[0])
    if found is None or found.origin in ("built-in", "frozen"):
        return None
    if found.origin is None:  # a namespace package (no __init__.py): its folder's parent is on the path
        locations = list(found.submodule_search_locations or [])
        if not locations:
            return None
        root = Path(locations[0]).resolve().parent
    else:
        origin = Path(found.origin).resolve()
        root = origin.parent.parent if found.submodule_search_locations else origin.parent
    # found without help: installed, or one of slimlens's own packages (zoo.models...)
    known = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")} | {Path(__file__).resolve().parent}
    return None if root in known else str(root)


def _compress_command(args: argparse.Namespace) -> str:
    import shlex

    # absolute paths, so the command reproduces the run from any folder; no --force, which would also delete what a
    # user keeps inside the run folder (explain's output, which the report finds there)
    recipe = str(Path(args.recipe).resolve()) if Path(args.recipe).is_file() else args.recipe
    parts = ["slimlens", "compress", args.model, "--recipe", recipe, "--out", str(Path(args.out).resolve()), "--seed", str(args.seed)]
    for flag, value in (("--weights", args.weights), ("--data", args.data), ("--data-root", args.data_root)):
        resolved = str(Path(value).resolve()) if value is not None and flag != "--data" else value
        parts += [flag, str(resolved)] if value is not None else []
    parts += ["--trust-pickle"] if args.trust_pickle else []
    parts += ["--no-latency"] if not args.latency else []
    parts += ["--no-report"] if not args.report else []
    parts += ["--threads", str(args.threads)] if args.threads != 2 else []
    parts += ["--rounds", str(args.rounds)] if args.rounds != 3 else []
    command = shlex.join(parts + (["--onnx-exporter", args.onnx_exporter] if args.onnx_exporter != "auto" else []))
    builder_path = _builder_path(args.model)
    if builder_path is None:
        return command
    # the builder's folder first, then the rest of the caller's PYTHONPATH its module may import from
    entries = [builder_path] + [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return f"PYTHONPATH={shlex.quote(os.pathsep.join(dict.fromkeys(entries)))} {command}"


def _refuse_inputs_inside(out: Path, inputs: dict[str, str | None]) -> None:
    """Refuse a --force run whose own input file lies inside the --out folder it would replace."""
    from zoo.errors import SlimlensError

    out = out.resolve()
    for flag, given in inputs.items():
        if given and Path(given).exists() and Path(given).resolve().is_relative_to(out):
            raise SlimlensError(f"{flag} {given} lies inside --out {out}, which --force replaces with the new run; "
                                f"move it out of {out} first, or name another --out")


def cmd_compress(args: argparse.Namespace) -> int:
    """Apply a recipe to a model; write variants, results.json and report.html."""
    import shutil

    import torch

    from compress.context import data_for
    from compress.pipeline import check_fits, load_model, run
    from compress.recipe import load_recipe
    from compress.results import move_into_place, staging_dir, write_results

    import reports  # compress never imports reports; the CLI joins them: latency, then the HTML report

    recipe = load_recipe(args.recipe)  # bad input fails here, before anything is built or written
    if args.force:
        _refuse_inputs_inside(Path(args.out), {"--recipe": args.recipe, "--weights": args.weights, "--data-root": args.data_root})
    timing = reports.TimingConfig(compile=False, threads=args.threads, rounds=args.rounds)
    model = load_model(args.model, args.weights, args.trust_pickle)
    data = data_for(args.model, args.data, args.data_root, seed=args.seed)
    if data.family == "custom":
        check_fits(model, data)
    if ":" in args.model and args.weights is None:  # not an error: the builder may load its own weights
        print(f"slimlens: note: no --weights given; compressing the weights {args.model}() builds", file=sys.stderr, flush=True)
    staged = staging_dir(args.out, args.force)
    try:
        torch.manual_seed(args.seed)
        variants = run(model, recipe, data, out_dir=staged, progress=lambda m: _say(args, m), command=_compress_command(args),
                       exporter=args.onnx_exporter)
        results = variants.results
        if args.latency:
            from reports.inputs import inputs_description, timing_inputs

            x = timing_inputs(data.source.get("zoo"), timing.batch, data.input_shape)
            timed = reports.latencies(list(variants), x[:1].clone(), x, ["cpu"], timing, progress=lambda m: _say(args, m))
            for entry, figures in zip(results["variants"], timed):
                entry["latency"] = figures
            results["timing"] = timing.how()
            results["timing_inputs"] = inputs_description(data.source.get("zoo"), data.input_shape)
        write_results(results, staged / "results.json")
        if args.report:
            run_results = reports.read_results(staged)
            run_results["_dir"] = str(Path(args.out).resolve())  # name the folder the run will live in, not the staging one
            reports.render([run_results], staged / "report.html")
        move_into_place(staged, args.out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if args.report:  # stdout stays the results.json path scripts read; the page to open is named beside the progress
        _say(args, f"report: {Path(args.out) / 'report.html'}")
    print(Path(args.out) / "results.json")
    return 0


def _add_compress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="apply a compression recipe; write variants, results.json and report.html")
    p.add_argument("model", help="a zoo model name, or package.module:function that builds a torch module")
    p.add_argument("--recipe", required=True, help="a preset (int8, prune-structured, distill, deep-compression, edge) or a TOML file")
    p.add_argument("--out", required=True, help="the folder to write (built beside it, then renamed into place)")
    p.add_argument("--weights", help="weights for MODEL: safetensors, or a state dict torch.load reads with weights_only=True")
    p.add_argument("--trust-pickle", action="store_true", help="allow --weights that need full unpickling (runs code from the file)")
    p.add_argument("--data", choices=("mnist", "mnist-ge5"), help="the dataset to calibrate, fine-tune and evaluate on (zoo models know theirs)")
    p.add_argument("--data-root", help="a torchvision-format MNIST folder instead of the bundled digits")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip the latency measurement")
    p.add_argument("--threads", type=threads_arg, default=2, help="CPU threads for timing PyTorch and ONNX Runtime (default: 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds over the variants (default: 3)")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip report.html")
    p.add_argument("--onnx-exporter", choices=("auto", "dynamo", "legacy"), default="auto", help="ONNX exporter for the fp32 exports")
    p.add_argument("--quiet", action="store_true", help="no progress lines (warnings still print)")
    p.set_defaults(func=cmd_compress)


# ---- report and bench ------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render report.html from one or more runs without re-running anything."""
    import reports

    out = reports.render([reports.read_results(d) for d in args.dirs], args.out)
    print(out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure a zoo model or a run folder without compressing."""
    import shlex

    import reports

    cfg = reports.TimingConfig(batch=args.batch, threads=args.threads, compile=not args.no_compile,
                               min_seconds=args.min_seconds, warmup=args.warmup, rounds=args.rounds)
    out = Path(args.out or f"bench-{Path(args.target).name}")
    # every timing setting, so that the report's "reproduce with" line measures the same way
    target = str(Path(args.target).resolve()) if Path(args.target).is_dir() else args.target
    flags = [f for f, on in (("--no-compile", args.no_compile), ("--no-memory", args.no_memory), ("--no-html", args.no_html),
                             ("--trust-code", args.trust_code)) if on]
    command = shlex.join(["slimlens", "bench", target, "--devices", args.devices, "--batch", str(args.batch),
                          "--threads", str(args.threads), "--warmup", str(args.warmup), "--min-seconds", str(args.min_seconds),
                          "--rounds", str(args.rounds), "--out", str(out)] + flags)
    reports.bench(args.target, out, args.devices, cfg, memory=not args.no_memory, html=not args.no_html, force=args.force,
                  command=command, progress=lambda m: _say(args, m), trust_code=args.trust_code)
    print(out / "results.json")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render report.html from one or more runs' results.json (nothing is re-run)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders holding results.json; several are shown side by side")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default: ./report.html)")
    p.set_defaults(func=cmd_report)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure a zoo model (or a run folder's variants) without compressing")
    p.add_argument("--trust-code", action="store_true", help="allow a run folder's variants to rebuild a user's model by calling the package.module:function they name")
    p.add_argument("target", metavar="MODEL", help="a zoo model name, or a run folder written by compress or bench")
    p.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda (default: cpu)")
    p.add_argument("--batch", type=int, default=8, help="the throughput batch size (default: 8)")
    p.add_argument("--threads", type=threads_arg, default=2, help="CPU threads for PyTorch and ONNX Runtime (default: 2)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before timing (default: 10)")
    p.add_argument("--min-seconds", type=float, default=0.5, help="time each measurement at least this long (default: 0.5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds over the variants; their calls are pooled (default: 3; 1 times each variant in one go)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it costs tens of seconds per variant)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe (one extra forward pass per variant)")
    p.add_argument("--no-html", action="store_true", help="write results.json only")
    p.add_argument("--out", help="folder to write results.json and report.html into (default: ./bench-MODEL)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bench)


# ---- explain ---------------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    """Write heatmaps, a grid and explain.json for a model or variant."""
    from explain.inputs import parse_indices
    from explain.run import Request, run
    from zoo.errors import SlimlensError

    if args.samples is not None and (args.indices is not None or args.image):  # it would be silently ignored
        picked = "--indices picks the test images" if args.indices is not None else "--image is the one input"
        raise SlimlensError(f"use --samples or {'--indices' if args.indices is not None else '--image'}, not both: {picked} to explain")
    module = None
    if ":" in args.model:  # a user's own network, loaded as compress loads it
        from compress.pipeline import load_model

        module = load_model(args.model, args.weights, trust_pickle=args.trust_pickle)
        if args.weights is None:  # an untrained network's maps look like maps too, so say whose weights these are
            _say(args, f"note: no --weights: explaining {args.model}() with the weights it builds itself")
    elif args.weights:
        raise SlimlensError(f"--weights loads your own model (package.module:function); retrained weights of zoo model {args.model} "
                            "come from a folder with --weights-root")
    variant = None
    if args.variant:
        from compress import load_variant

        # the builder named by a variant of the very MODEL explained was imported and called already: no more code to trust
        variant = load_variant(args.variant, trust_code=args.trust_code, trusted_builder=args.model if module is not None else None)
    request = Request(
        model=args.model,
        out=Path(args.out),
        methods=_methods_arg(args.methods),
        samples=Request.samples if args.samples is None else args.samples,  # the library's default where --samples was not given
        indices=parse_indices(args.indices) if args.indices is not None else None,
        image=Path(args.image) if args.image else None,
        variant=variant,
        variant_path=args.variant,
        trust=not args.no_trust,
        shared_scale=args.shared_scale,
        seed=args.seed,
        weights_root=args.weights_root,
        weights=args.weights,
        module=module,
        data=args.data,
        progress=lambda m: _say(args, m),
    )
    result = run(request)
    _say(args, f"{len(result['files'])} files in {result['seconds']:.1f} s")
    print(Path(args.out) / "explain.json")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="heatmaps of what a model looks at, how far they can be trusted, and how a variant moves them")
    p.add_argument("model", metavar="MODEL", help="a zoo model name (slimlens zoo list), or package.module:function building your own network")
    p.add_argument("--weights", help="your model's weights: safetensors, or a state dict torch.load(weights_only=True) reads "
                   "(default: the builder's own initialisation)")
    p.add_argument("--data", help="the dataset your model was trained on: mnist or mnist-ge5 (a zoo model knows its own)")
    p.add_argument("--trust-pickle", action="store_true", help="allow a --weights pickle that needs full unpickling (it can run code)")
    p.add_argument("--methods", help="comma-separated, e.g. integrated_gradients,gradcam,occlusion (default); "
                   "also saliency, input_x_gradient, deeplift, gradient_shap, guided_backprop, feature_ablation, lime, kernel_shap, "
                   "smoothgrad, noise_tunnel:<gradient method>")
    p.add_argument("--samples", type=int, help="test images to explain, one of each class in turn (default: 8; at most the split's size; grid.png shows the first 32); "
                   "a discriminator also explains as many generated digits beside them, and a generator that many latent vectors")
    p.add_argument("--indices", help="test-split indices instead, e.g. 3,17,40-43")
    p.add_argument("--image", help="explain this 28x28 digit image file instead (PNG; colour or larger square images are converted)")
    p.add_argument("--trust-code", action="store_true", help="allow --variant to rebuild a user's model by calling the package.module:function it names")
    p.add_argument("--variant", help="a compressed variant (<name>.variant.json or its folder): its maps are compared with the original's")
    p.add_argument("--out", default="explain-out", help="output folder, written all at once (default: ./explain-out)")
    p.add_argument("--no-trust", action="store_true", help="skip the trust metrics (faithfulness, sensitivity, randomisation)")
    p.add_argument("--shared-scale", action="store_true", help="one colour scale per method in the grid instead of one per map")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed for noise, random baselines and latents (default: 0)")
    p.add_argument("--weights-root", help="folder of retrained weights and cards (default: the ones shipped with slimlens)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_explain)


# ---- entry point -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``slimlens`` argument parser."""
    parser = OneLineParser(prog="slimlens", description="Make neural networks smaller and faster, and show what they look at.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_zoo(sub)
    _add_compress(sub)
    _add_steps(sub)
    _add_report(sub)
    _add_bench(sub)
    _add_explain(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a cancelled CI job), raised like Ctrl-C so every temporary folder is removed."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run ``slimlens`` with ``argv``; user errors become one line on stderr and exit code 2."""
    try:
        return _run(argv)
    except KeyboardInterrupt:  # Ctrl-C while torch is still importing, before the command's own handling is in place
        print("slimlens: interrupted", file=sys.stderr)
        return 130


def _run(argv: list[str] | None) -> int:
    from zoo.errors import SlimlensError

    parser = build_parser()
    args = parser.parse_args(argv)
    # Python's default SIGTERM ends the process without running `finally`, leaving the hidden
    # .partial folder of an unfinished run beside --out; as an exception it is cleaned up on the way out.
    # Only the main thread may set handlers, and a caller's own handler (or an inherited SIG_IGN) is left alone.
    ours = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if ours:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.func(args)
    except SlimlensError as exc:
        print(f"slimlens: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Terminated:
        print("slimlens: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("slimlens: interrupted", file=sys.stderr)
        return 130
    finally:
        if ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
