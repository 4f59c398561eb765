"""The `cbam` command line: train, eval, compare, demo, viz, ablate, export, bench.

Expected failures (bad flags or files, a diverged run, a full disk) end as one line
on stderr and exit code 2; ``--debug`` or ``CBAM_DEBUG=1`` shows the traceback.
"""
import argparse
import dataclasses
import json
import os
import sys
from typing import Any, List, Optional

from .train.config import TrainConfig
from .train.runs import load_pretrained_model, load_run_model

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags (``--epoch 1`` must not run ``--epochs 1``), and usage errors in one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seconds(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        x = float("nan")
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {v!r}")
    return x


def _positive_int(v: str) -> int:
    if not v.strip().isdigit() or int(v) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v!r}")
    return int(v)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size, --no-hflip, ...). Values stay strings here:
    TrainConfig coerces and checks them, the same way as the values of a config file."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if f.type in (bool, "bool"):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default {default})")
        elif f.name == "attention_kwargs":
            p.add_argument(flag, dest=f.name, default=None, metavar="JSON", help="e.g. '{\"reduction\": 8}'")
        else:
            p.add_argument(flag, dest=f.name, default=None, help=f"(default {default})")


def _config_from_args(a: argparse.Namespace) -> TrainConfig:
    base = TrainConfig.from_file(a.config).to_dict() if a.config else TrainConfig().to_dict()
    base.update({k: v for k in _FIELDS if (v := getattr(a, k, None)) is not None})
    return TrainConfig.from_dict(base)


def cmd_train(a: argparse.Namespace) -> int:
    from .train import train
    cfg = _config_from_args(a)
    res = train(cfg)
    if res.history and int(os.environ.get("RANK", "0")) == 0:
        last = res.history[-1]
        print(f"done: {cfg.out}  test top-1 {100 * last.get('test_acc', float('nan')):.2f} %  "
              f"params {res.params:,}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    import numpy as np
    from ._io import write_json
    from .train import evaluate
    from .train.metrics import plot_confusion
    if a.pretrained:
        model, cfg, data = load_pretrained_model(a.run, a.pretrained, a.split, a.data, a.data_root)
        out = a.out or os.path.join("runs", "eval", f"{a.run}-{a.pretrained}")
    else:
        model, cfg, data = load_run_model(a.run, a.split, a.data, a.data_root)
        out = a.out or os.path.join(a.run, "eval")
    ev = evaluate(model, data, image_size=cfg.image_size)
    os.makedirs(out, exist_ok=True)
    plot_confusion(os.path.join(out, "confusion.png"), ev["confusion"], data.classes,
                   f"{cfg.model} on {data.name} {a.split} (top-1 {100 * ev['test_acc']:.2f} %)")
    write_json(os.path.join(out, "eval.json"), {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                 for k, v in ev.items()})
    print(f"{a.run}: top-1 {100 * ev['test_acc']:.2f} %  top-5 {100 * ev['test_top5']:.2f} %  "
          f"loss {ev['test_loss']:.4f}  ({len(data)} {a.split} images from {data.source})")
    for c, acc in zip(data.classes, ev["per_class_acc"]):
        print(f"  {c:>14s}: {100 * acc:6.2f} %")
    print(f"confusion matrix: {os.path.join(out, 'confusion.png')}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from .train.report import compare_runs
    print(compare_runs(a.runs, a.out))
    if a.out:
        print(f"\nwritten: {os.path.join(a.out, 'compare.md')}, {os.path.join(a.out, 'compare_curves.png')}")
    return 0


def _viz_images(data, n: int, files=None):
    import torch
    from .data import EvalTransform
    if files:
        from PIL import Image
        import numpy as np
        arrs = []
        for f in files:
            with Image.open(f) as im:
                im = im.convert("L" if data.in_chans == 1 else "RGB").resize((data.image_size,) * 2)
                a = np.asarray(im, dtype=np.uint8)
                arrs.append(a[None] if data.in_chans == 1 else a.transpose(2, 0, 1))
        raw, titles = torch.from_numpy(np.stack(arrs)), [os.path.basename(f) for f in files]
    else:
        idx = torch.arange(n) * (len(data) // n)
        raw, titles = data.images[idx], [data.classes[int(data.labels[i])] for i in idx]
    return EvalTransform(data.mean, data.std, data.image_size)(raw), titles


def _demo_viz(out: str, runs, names):
    from .viz.report import visualize
    models, data = {}, None
    for r, n in zip(runs, names):
        models[n], _, data = load_run_model(r["path"])
    x, titles = _viz_images(data, 6)
    md = visualize(models, x, titles, os.path.join(out, "viz"))
    return [line.replace("](", "](viz/") if line.startswith("![") else line for line in md[1:]]


def cmd_viz(a: argparse.Namespace) -> int:
    from .viz.report import visualize
    models, data = {}, None
    for path in a.runs:
        m, cfg, data = load_run_model(path)
        models[os.path.basename(os.path.normpath(path))] = m
    x, titles = _viz_images(data, a.n, a.images)
    visualize(models, x, titles, a.out)
    print(f"written: {os.path.join(a.out, 'index.md')} and its PNGs")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    import torch
    from . import export as E
    model, cfg, data = load_run_model(a.run)
    size = cfg.image_size or data.image_size
    x = torch.randn(2, data.in_chans, size, size)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    if a.format == "onnx":
        E.export_onnx(model, a.out, x, opset=a.opset, min_size=a.min_size)
        err = E.check_onnx(a.out, model, [torch.randn(n, data.in_chans, size, size) for n in (1, 3)])
        print(f"written {a.out}; onnxruntime vs PyTorch max |diff| = {err:.2e}; ops: "
              f"{', '.join(sorted(E.onnx_op_types(a.out)))}")
    elif a.format in ("script", "trace"):
        E.export_torchscript(model, a.out, a.format, x)
        print(f"written {a.out} (TorchScript, {a.format})")
    else:
        from ._io import atomic_write
        ep = E.export_program(model, x, min_size=a.min_size)
        atomic_write(a.out, lambda p: torch.export.save(ep, p))
        print(f"written {a.out} (torch.export program, fused op decomposed)")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .train.demo import run_demo
    hook = None
    try:
        import matplotlib  # noqa: F401  (figures need the viz extra)
        hook = _demo_viz
    except ImportError:
        pass
    fixed = {"train_subset": a.train_subset} if a.train_subset else {}
    run_demo(a.out, quick=a.quick, progress=not a.no_progress, resume=not a.fresh, after_training=hook,
             budget_s=a.budget or None, **fixed)
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def cmd_bench(a: argparse.Namespace) -> int:
    from . import bench, bench_matrix
    if a.device.startswith("cuda") and not _cuda():
        raise ValueError(f"--device {a.device}: no CUDA device here; use --device cpu")
    configs = bench_matrix.default_configs(a.device) if a.configs == "auto" else a.configs
    nets, configs = _names(a.nets, bench_matrix.NETS, "--nets"), _names(configs, bench_matrix.CONFIGS, "--configs")
    if a.configs == "auto" and len(configs) < len(bench_matrix.CONFIGS):
        print("note: no bf16 columns: this CPU has no bfloat16 arithmetic (avx512_bf16 / amx_bf16), where bf16 "
              "autocast is several times slower than fp32 for every network; --configs names them to time it anyway")
    shapes = bench.STAGES
    if a.smoke:
        shapes = [(32, 8), (64, 4)]
        a.n, a.reps = 2, 1
    if a.device == "cpu":
        print(f"note: {bench.allocator_note()}. Page faults on fresh memory are part of the eager and network "
              "times: glibc's defaults give freed blocks back to the OS, tcmalloc (LD_PRELOAD) or "
              "MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ keep them. See docs/PERFORMANCE.md")
    md = bench.run_bench(a.device, a.n, a.dtype, a.reps, not a.no_network, nets, configs, a.smoke,
                         not a.no_stages, True, a.out, shapes=shapes)
    print("\n" + md)
    return 0


def _names(text: str, valid: Any, flag: str) -> List[str]:
    """A comma-separated list of names, each one of ``valid``."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in valid]
    if bad or not names:
        raise ValueError(f"{flag} {text!r}: choose from {', '.join(valid)} (comma-separated)")
    return names


# ---- `cbam ablate`: its parser and handler together, beside its recipes in train/ablate.py ----
def _add_ablate_command(sub: Any) -> None:
    def run(a: argparse.Namespace) -> int:
        from .train.ablate import ablate
        flags = {f.name: getattr(a, f.name, None) for f in dataclasses.fields(TrainConfig) if f.name != "out"}
        path = ablate("smoke" if a.smoke else a.suite, a.seeds, a.out, a.config, flags, a.shard, a.summary_only)
        if path:
            print(f"\nwritten: {path}, summary.csv, summary.json, summary.png")
        return 0

    ab = sub.add_parser("ablate", help="the paper's comparisons and ablations, several seeds, resumable")
    ab.add_argument("--suite", default="paper", help="paper (default), smoke, converged, converged-paper, cluttered "
                                                     "(variants and recipe: src/cbam/train/ablate.py)")
    ab.add_argument("--seeds", type=int, default=3)
    ab.add_argument("--smoke", action="store_true", help="two variants, tiny subset: proves the machinery only")
    ab.add_argument("--shard", help="K/N: train only entries K, K+N, ... of the grid (0 <= K < N), for N machines "
                                    "sharing --out; 'auto' reads a SLURM array or torchrun's RANK/WORLD_SIZE")
    ab.add_argument("--summary-only", action="store_true", help="train nothing: merge the runs in --out into the "
                                                                "summary (after all shards finished)")
    ab.add_argument("--config", help="recipe file (TrainConfig fields)")
    _add_config_flags(ab)
    ab.set_defaults(fn=run)
# ---- end of `cbam ablate` ----


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cbam", description="CBAM and its attention family: train, evaluate, compare.")
    p.add_argument("--debug", action="store_true", help="show tracebacks (also CBAM_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_run_commands(sub)
    _add_ablate_command(sub)
    _add_tool_commands(sub)
    for sp in sub.choices.values():  # `cbam train ... --debug` works as well as `cbam --debug train ...`
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _add_run_commands(sub: Any) -> None:
    t = sub.add_parser("train", help="train a model (config dataclass: flags or --config FILE)")
    t.add_argument("--config", help="YAML or JSON file with TrainConfig fields; flags override it")
    _add_config_flags(t)
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a run: top-1/top-5, per-class accuracy, confusion matrix PNG")
    e.add_argument("run", help="run folder written by `cbam train`, or with --pretrained a model name")
    e.add_argument("--pretrained", metavar="TAG", help="evaluate the shipped weights TAG of the model named by RUN "
                   "(e.g. `cbam eval resnet20_cbam --pretrained fashion-mnist`)")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--data", help="dataset name (default: the run's)")
    e.add_argument("--data-root")
    e.add_argument("--out", help="output folder (default RUN/eval, or runs/eval/NAME-TAG)")
    e.set_defaults(fn=cmd_eval)
    c = sub.add_parser("compare", help="table and overlaid curves of several runs")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out", help="folder for compare.md and compare_curves.png")
    c.set_defaults(fn=cmd_compare)
    d = sub.add_parser("demo", help="baseline vs SE vs CBAM ResNet-20 on the default data (<= 10 min on 2 cores)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="a one-minute smoke version")
    d.add_argument("--fresh", action="store_true", help="retrain even if runs exist")
    d.add_argument("--budget", type=_seconds, default=540.0, metavar="SECONDS",
                   help="size the training subset from throughput measured here so the whole demo takes about "
                        "this long (default 540; 0: the full recipe however long it takes)")
    d.add_argument("--train-subset", type=_positive_int, metavar="N",
                   help="train on N images (fixes the size; no budget sizing)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_demo)
    v = sub.add_parser("viz", help="attention maps per stage and Grad-CAM of trained runs (PNG + index.md)")
    v.add_argument("runs", nargs="+", help="run folders, e.g. a baseline and a CBAM run")
    v.add_argument("--images", nargs="*", help="image files (default: test images of the runs' dataset)")
    v.add_argument("--n", type=int, default=6, help="number of dataset images")
    v.add_argument("--out", default="runs/viz")
    v.set_defaults(fn=cmd_viz)


def _add_tool_commands(sub: Any) -> None:
    x = sub.add_parser("export", help="ONNX (checked in onnxruntime), TorchScript or torch.export of a run")
    x.add_argument("run")
    x.add_argument("--format", default="onnx", choices=["onnx", "script", "trace", "program"])
    x.add_argument("--out", required=True)
    x.add_argument("--opset", type=int, default=18)
    x.add_argument("--min-size", type=int, default=8, help="smallest dynamic H/W the export must accept")
    x.set_defaults(fn=cmd_export)
    b = sub.add_parser("bench", help="fused vs eager CBAM, the memory bound, and CBAM's overhead in networks by "
                                     "configuration (a command, not a test)")
    b.add_argument("--device", default="cuda" if _cuda() else "cpu")
    b.add_argument("--n", type=int, default=32, help="batch of the stage shapes")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    b.add_argument("--reps", type=int, default=5)
    b.add_argument("--nets", default="resnet50,resnet20,resnet20-b1",
                   help="networks of the configuration matrix: resnet50 (batch 8; 64 on CUDA), resnet20 (batch 128), "
                        "resnet20-b1 (batch 1)")
    b.add_argument("--configs", default="auto",
                   help="configurations of the matrix, comma-separated; auto: fp32 and bf16 x NCHW and "
                        "channels_last, without bf16 on a CPU that has no bfloat16 arithmetic")
    b.add_argument("--no-network", action="store_true", help="skip the network matrix")
    b.add_argument("--no-stages", action="store_true")
    b.add_argument("--smoke", action="store_true", help="tiny shapes, one repetition: checks the machinery only")
    b.add_argument("--out", help="also write the markdown table here")
    b.set_defaults(fn=cmd_bench)
    _add_publish_command(sub)


def cmd_publish(a: argparse.Namespace) -> int:
    from .models import pretrained
    if a.list or not a.run:
        print("\n".join(f"{m}: pretrained='{t}'" for m, t in pretrained.available()) or "no pretrained weights shipped")
        return 0
    if not a.tag:
        raise ValueError("--tag is required to publish (e.g. --tag fashion-mnist)")
    from .train.publish import publish
    w, c = publish(a.run, a.tag, a.name, a.dest, a.min_acc, a.licence)
    with open(c, encoding="utf-8") as f:
        print(f"written {w} and {c} (test top-1 {json.load(f)['test_top1']:.2f} %)")
    return 0


def _add_publish_command(sub: Any) -> None:
    p = sub.add_parser("publish", help="a finished run as shipped pretrained weights + model card")
    p.add_argument("run", nargs="?", help="run folder written by `cbam train` / `cbam ablate`")
    p.add_argument("--tag", help="e.g. fashion-mnist: create_model(name, pretrained=TAG)")
    p.add_argument("--name", help="model name (default: the run's, e.g. resnet20_cbam)")
    p.add_argument("--dest", help="output folder (default: the package's pretrained folder)")
    p.add_argument("--min-acc", type=float, help="refuse below this test top-1 (%%)")
    p.add_argument("--licence", help="licence text (default for Fashion-MNIST runs: MIT)")
    p.add_argument("--list", action="store_true", help="list the shipped checkpoints")
    p.set_defaults(fn=cmd_publish)


def _after_interrupt(a: argparse.Namespace) -> str:
    """What continues the interrupted command, in its own terms (empty: nothing to continue)."""
    if a.cmd == "train":
        return ("rerun the same command" + ("" if a.resume else " with --resume") +
                " to continue from the last checkpoint")
    if a.cmd == "demo":
        return "rerun `cbam demo" + (f" --out {a.out}" if a.out != "runs/demo" else "") + \
            "` (without --fresh) to continue: finished variants are kept"
    if a.cmd == "ablate":
        return "rerun the same command to continue: finished runs are skipped"
    return ""


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the message names `cbam train`, not `cbam`
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.cmd].error(f"unrecognized arguments: {' '.join(extra)}")
    from .train.checkpoint import TrainingDiverged
    debug = args.debug or os.environ.get("CBAM_DEBUG", "") not in ("", "0")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        hint = _after_interrupt(args)
        print(f"cbam {args.cmd}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, TrainingDiverged) as e:  # expected: bad input, disk, missing extra
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message holds
        print(f"cbam {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
