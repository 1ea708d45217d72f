"""``python -m tl_core``: the command line. Each command is a small function over tl_core;
bad arguments exit non-zero with one clear line (no traceback)."""
from __future__ import annotations

import argparse
import json
import sys


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def _emit(args, rows: list[dict] | dict, columns: list[str] | None = None) -> None:
    if args.json:
        print(json.dumps(rows, default=str))
    elif isinstance(rows, dict):
        for k, v in rows.items():
            print(f"{k}: {v}")
    else:
        _print_table(rows, columns or list(rows[0]))


# --- backbones -------------------------------------------------------------------------------
def cmd_backbones(args) -> int:
    from . import backbones

    rows = [backbones.describe(k) for k in backbones.catalogue()]
    for r in rows:
        r["params"] = f"{r['params'] / 1e6:.1f}M" if not args.json else r["params"]
        r["mean/std"] = f"{r['mean']}/{r['std']}"
    _emit(args, rows, ["key", "family", "params", "input_size", "interpolation", "mean/std", "weights_label"])
    return 0


def cmd_layers(args) -> int:
    from . import backbones, surgery

    model, _ = backbones.create_model(args.backbone, weights="random")
    hier = surgery.hierarchy(model, image_size=args.image_size)
    if args.json:
        print(json.dumps(hier.to_dict()))
        return 0
    for node, depth in hier.walk():
        shape = "x".join(map(str, node.out_shape)) if node.out_shape else ""
        bn = "BN" if node.has_bn else ""
        print(f"{'  ' * depth}{node.name:<{34 - 2 * depth}} {node.kind:<6} {node.params:>11,}  {shape:<14} {bn}")
    print(f"{len(hier.blocks)} toggleable blocks, {hier.total_params:,} parameters at {args.image_size} px")
    return 0


# --- registry --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tl_core", description="Transfer Learning Lab from the command line.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("backbones", help="list the backbone catalogue with weight status")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_backbones)

    s = sub.add_parser("layers", help="print a backbone's block hierarchy")
    s.add_argument("backbone")
    s.add_argument("--image-size", type=int, default=224)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_layers)

    # >>> data commands (tl_core.data)
    # <<< data commands

    # >>> training commands (tl_core.training / tl_core.runs)
    # <<< training commands
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .backbones import WeightsError

    try:
        return args.func(args)
    except (WeightsError, KeyError, ValueError, FileNotFoundError, PermissionError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
