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


# --- datasets --------------------------------------------------------------------------------
def cmd_datasets(args) -> int:
    from . import data

    rows = data.list_datasets()
    if not args.json:
        for r in rows:
            names = r["class_names"]
            r["classes"] = f"{len(names)} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            r["native"] = f"{r['native_size']}x{r['native_size']}"
    _emit(args, rows, ["key", "name", "size", "classes", "native", "similarity"])
    return 0


def cmd_check_data(args) -> int:
    from . import data

    try:
        report = data.check_data(args.path, data_root=args.data_root)
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        layout = "train/ + val/" if report.has_split else "one folder per class"
        n = len(report.classes)
        print(f"{report.source}: {report.num_images} images, {n} class{'es' if n != 1 else ''} ({layout})")
        for c in report.classes:
            val = f"  ({report.val_counts[c]} in val/)" if report.has_split else ""
            print(f"  {c:<24} {report.counts[c]:>6}{val}")
        if report.skipped:
            print(f"skipped {len(report.skipped)} file(s):")
            for name, why in report.skipped:
                print(f"  {name}: {why}")
        for e in report.errors:
            print(f"problem: {e}")
    if not report.ok:
        print(f"error: {report.source} is not usable: {report.errors[0]}"
              + (f" (+{len(report.errors) - 1} more problems)" if len(report.errors) > 1 else ""), file=sys.stderr)
        return 1
    return 0


# --- training runs (tl_core.training / tl_core.runs) -----------------------------------------
_AUGMENT_NAMES = {"flip": "flip", "crop": "random_resized_crop", "jitter": "color_jitter"}
_CFG_ARGS = ("name", "backbone", "weights", "data", "data_root", "per_class", "image_size", "strategy",
             "freeze_blocks", "head_epochs", "epochs", "batch_size", "lr", "backbone_lr_mult", "lr_decay",
             "bn_mode", "seed", "device", "allow_download")
_FINAL_STATUSES = ("completed", "stopped")


def _train_config(args):
    from .training import TrainConfig

    fields = {k: getattr(args, k) for k in _CFG_ARGS if getattr(args, k, None) is not None}
    if args.augment is not None:
        names = [a.strip().lower() for a in args.augment.split(",") if a.strip() and a.strip().lower() != "none"]
        unknown = [n for n in names if n not in _AUGMENT_NAMES]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}: use a list of {', '.join(_AUGMENT_NAMES)}")
        fields["augment"] = {_AUGMENT_NAMES[n]: True for n in names}
    if fields.get("weights", "pretrained") not in ("pretrained", "random"):
        raise ValueError(f"--weights must be pretrained or random, not {fields['weights']!r}")
    cfg = TrainConfig(**fields)
    cfg.validate()
    return cfg


def _epoch_line(m: dict) -> str:
    def f(key, fmt):
        return format(m[key], fmt) if isinstance(m.get(key), (int, float)) else "-"

    return (f"epoch {m.get('epoch')}  train loss {f('train_loss', '.4f')} acc {f('train_acc', '.3f')}  "
            f"val loss {f('val_loss', '.4f')} acc {f('val_acc', '.3f')}  {f('images_per_s', '.0f')} img/s")


def _follow(store, run_id: str, log) -> bool:
    """Follow a run until it ends: progress bar (terminal only), one line per epoch on ``log``.
    Ctrl-C requests a stop; a second Ctrl-C detaches (the run goes on). Returns False if detached."""
    import time

    from tqdm import tqdm

    bar, last_step, last_epoch, last_status, stopping = None, 0, 0, None, False
    tty = sys.stderr.isatty()
    try:
        while True:
            try:
                run = store.get(run_id)
                if (run.status, run.reason) != last_status and run.active and run.reason:
                    print(f"[{run_id}] {run.status}: {run.reason}", file=sys.stderr)
                last_status = (run.status, run.reason)
                if bar is None and run.info:
                    i = run.info
                    print(f"[{run_id}] {i.get('backbone')} ({i.get('weights_label')}) on {i.get('device')}: "
                          f"{i.get('num_train')} train / {i.get('num_val')} val images, {i.get('num_classes')} "
                          f"classes, {i.get('total_epochs')} epochs; {i.get('cache')}", file=sys.stderr)
                    total = (i.get("steps_per_epoch") or 0) * (i.get("total_epochs") or 0)
                    bar = tqdm(total=total or None, unit="step", file=sys.stderr, disable=not tty, leave=False)
                for row in store.metrics(run_id, "step", last_step):
                    last_step = row["seq"]
                    if bar is not None and isinstance(row.get("step"), int):
                        bar.update(max(0, row["step"] - bar.n))  # steps count from 1
                        bar.set_postfix(epoch=row.get("epoch"), loss=row.get("loss"), refresh=False)
                for row in store.metrics(run_id, "epoch", last_epoch):
                    last_epoch = row["seq"]
                    (bar.write if bar is not None and tty else print)(_epoch_line(row), file=log)
                if not run.active:
                    return True
                time.sleep(0.25)
            except KeyboardInterrupt:
                if stopping:
                    print(f"detached; run {run_id} is still stopping (python -m tl_core runs)", file=sys.stderr)
                    return False
                stopping = True
                status = store.request_stop(run_id)
                print(f"stop requested ({status}); the run ends after the current batch. "
                      "Ctrl-C again to detach.", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()


def _run_summary(run) -> dict:
    s, info = run.summary or {}, run.info or {}
    keys = ("best_val_acc", "final_val_acc", "wall_s", "images_per_s", "trainable_params", "total_params")
    out = {"run_id": run.id, "status": run.status, "reason": run.reason}
    out.update({k: s.get(k, info.get(k)) for k in keys})
    out["device"] = s.get("device") or info.get("device") or run.device
    return out


def cmd_train(args) -> int:
    from .runs import RunStore, launch

    cfg = _train_config(args)  # bad arguments end here, before a run exists
    run_id = launch(cfg, args.runs_dir)
    store = RunStore(args.runs_dir)
    print(f"run {run_id} launched (log: {store.log_path(run_id)})", file=sys.stderr)
    log = sys.stderr if args.json else sys.stdout
    if not _follow(store, run_id, log):
        return 130
    summary = _run_summary(store.get(run_id))
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return 0 if summary["status"] in _FINAL_STATUSES else 1


def cmd_runs(args) -> int:
    import dataclasses
    import time

    from .runs import RunStore

    runs = RunStore(args.runs_dir).list_runs()
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in runs], default=str))
        return 0
    rows = [{
        "id": r.id, "name": r.name, "status": r.status + (f" #{r.queue_position}" if r.queue_position else ""),
        "device": r.device, "best_val_acc": (r.summary or {}).get("best_val_acc", ""),
        "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)), "reason": r.reason or "",
    } for r in runs]
    if rows:
        _print_table(rows, list(rows[0]))
    else:
        print(f"no runs in {RunStore(args.runs_dir).runs_dir}")
    return 0


def cmd_stop(args) -> int:
    from .runs import RunStore

    status = RunStore(args.runs_dir).request_stop(args.run_id)
    note = " (stop requested: it ends after the current batch)" if status == "running" else ""
    print(f"{args.run_id}: {status}{note}")
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
    s = sub.add_parser("datasets", help="list the built-in datasets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_datasets)

    s = sub.add_parser("check-data", help="validate a user dataset (ImageFolder folder or .zip)")
    s.add_argument("path", help="folder or .zip inside the data root")
    s.add_argument("--data-root", default=None, help="allowed data folder (default: $TL_DATA_ROOT, else ./data)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check_data)
    # <<< data commands

    # >>> training commands (tl_core.training / tl_core.runs)
    s = sub.add_parser("train", help="train in a worker process and follow it (Ctrl-C stops the run)")
    s.add_argument("--backbone")
    s.add_argument("--data", help="built-in dataset name, or a folder/zip inside the data root")
    s.add_argument("--data-root", default=None)
    s.add_argument("--strategy")
    s.add_argument("--weights", help="pretrained (default) or random")
    s.add_argument("--freeze-blocks", type=int)
    s.add_argument("--epochs", type=int)
    s.add_argument("--head-epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--backbone-lr-mult", type=float)
    s.add_argument("--lr-decay", type=float)
    s.add_argument("--bn-mode", help="frozen or train")
    s.add_argument("--image-size", type=int)
    s.add_argument("--per-class", type=int)
    s.add_argument("--augment", nargs="?", const="flip,crop,jitter",
                   help="comma list of flip,crop,jitter (the flag alone: all three)")
    s.add_argument("--seed", type=int)
    s.add_argument("--device", help="auto (default), cpu, cuda")
    s.add_argument("--name")
    s.add_argument("--allow-download", action="store_true",
                   help="download pretrained weights that are not on this machine (needs a network)")
    s.add_argument("--runs-dir", default=None, help="run store folder (default: $TL_RUNS_DIR, else ./runs)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("runs", help="list the runs in the run store")
    s.add_argument("--runs-dir", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("stop", help="stop a run (a queued run is cancelled)")
    s.add_argument("run_id")
    s.add_argument("--runs-dir", default=None)
    s.set_defaults(func=cmd_stop)
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
