"""``python -m tl_core``: the command line. Each command is a small function over tl_core;
bad arguments exit non-zero with one clear line (no traceback)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _clean(value) -> str:
    """``value`` as text for a terminal: control characters (ANSI escapes, newlines, tabs...) written as
    escapes (``\\x1b``, ``\\n``), so a class, file or run name cannot move the cursor or fake a line."""
    import unicodedata

    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or unicodedata.category(ch)[0] not in "CZ" or ch == " "
                   else ascii(ch)[1:-1] for ch in text)


def _print_table(rows: list[dict], columns: list[str]) -> None:
    rows = [{c: _clean(r.get(c, "")) for c in columns} for r in rows]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in columns))


def _emit(args, rows: list[dict] | dict, columns: list[str] | None = None) -> None:
    if args.json:
        print(json.dumps(rows, default=str))
    elif isinstance(rows, dict):
        for k, v in rows.items():
            print(f"{k}: {_clean(v)}")
    else:
        _print_table(rows, columns or list(rows[0]))


# --- backbones -------------------------------------------------------------------------------
def cmd_backbones(args) -> int:
    from tl_core.models import backbones

    rows = [backbones.describe(k) for k in backbones.catalogue()]
    for r in rows:
        r["params"] = f"{r['params'] / 1e6:.1f}M" if not args.json else r["params"]
        text = r.get("modality") == "text"  # tokens and a tokenizer, not pixels and a mean/std
        r["input"] = (f"{r['input_size'] or 'any'} tok" if text else f"{r['input_size']} px")
        r["preprocessing"] = (str(r.get("tokenizer")).split(":")[0].split(";")[0] if text
                              else f"{r['interpolation']}, {r['mean']}/{r['std']}")
    _emit(args, rows, ["key", "family", "params", "input", "preprocessing", "weights_label"])
    return 0


def cmd_layers(args) -> int:
    from tl_core.models import backbones
    from tl_core.training import config
    from tl_core import limits
    from tl_core.models import surgery

    lim = limits.current()  # the same bounds as a run: 0 or 4096 px is refused in one line
    config.check_backbone(args.backbone, lim)
    limits.check_int("--image-size", args.image_size, lim.min_image_size, lim.max_image_size, " of pixels")
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
    from tl_core import data
    from tl_core.data import texts as text_data

    rows = data.list_datasets() + [{**i.to_dict(), "native_size": None, "similarity": "text"}
                                   for i in text_data.list_text_datasets()]
    if not args.json:
        for r in rows:
            names = r["class_names"]
            r["classes"] = f"{len(names)} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            r["native"] = f"{r['native_size']}x{r['native_size']}" if r["native_size"] else "texts"
    _emit(args, rows, ["key", "name", "size", "classes", "native", "similarity"])
    return 0


def _check(path: str, data_root):
    """(report, noun, layout) of the data at ``path``: a ``.csv`` is text; a folder or zip is images, unless
    it holds no image but ``.txt`` files (then it is checked as text, and the image check's word is dropped)."""
    from tl_core import data
    from tl_core.data import texts as text_data

    resolved = data.resolve_data_path(path, data_root, files=(".csv",))  # says: a folder, a .zip or a .csv
    if resolved.suffix.lower() == ".csv":
        return text_data.check_text_data(resolved, data_root), "text", "one row per text"
    report, noun = data.check_data(resolved, data_root), "image"
    if not report.num_images and any(name.lower().endswith(".txt") for name, _ in report.skipped):
        report, noun = text_data.check_text_data(resolved, data_root), "text"
    return report, noun, "train/ + val/" if report.has_split else "one folder per class"


SHOWN_SKIPPED = 20  # check-data lists this many skipped files or rows (--json: all)


def cmd_check_data(args) -> int:
    from tl_core import data

    try:
        report, noun, layout = _check(args.path, args.data_root or data.UNRESTRICTED)  # the user's own files
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**report.to_dict(), "kind": noun}))
    else:
        n = len(report.classes)
        print(f"{_clean(report.source)}: {report.num_images} {noun}s, {n} class{'es' if n != 1 else ''} ({layout})")
        for c in report.classes:
            val = f"  ({report.val_counts[c]} in val/)" if report.has_split else ""
            print(f"  {_clean(c):<24} {report.counts[c]:>6}{val}")
        if getattr(report, "truncated", 0):
            print(f"{report.truncated} text(s) cut to the max_chars cap")
        if report.skipped:
            print(f"skipped {len(report.skipped)} {'row' if layout == 'one row per text' else 'file'}(s):")
            for name, why in report.skipped[:SHOWN_SKIPPED]:
                print(f"  {_clean(name)}: {_clean(why)}")
            if len(report.skipped) > SHOWN_SKIPPED:
                print(f"  ... and {len(report.skipped) - SHOWN_SKIPPED} more (--json lists them all)")
        for e in report.errors:
            print(f"problem: {_clean(e)}")
    if not report.ok:
        sys.stdout.flush()  # the verdict is the last line
        print(f"error: {_clean(report.source)} is not usable: {_clean(report.errors[0])}"
              + (f" (+{len(report.errors) - 1} more problems)" if len(report.errors) > 1 else ""), file=sys.stderr)
        return 1
    return 0


# --- training runs (tl_core.training.trainer / tl_core.runs.store) -----------------------------------------
_AUGMENT_NAMES = {"flip": "flip", "crop": "random_resized_crop", "jitter": "color_jitter"}
_CFG_ARGS = ("name", "backbone", "weights", "weights_file", "data", "data_root", "per_class", "image_size", "max_tokens",
             "strategy",
             "freeze_blocks", "head_epochs", "epochs", "batch_size", "lr", "backbone_lr_mult", "lr_decay",
             "bn_mode", "seed", "device", "allow_download")
_FINAL_STATUSES = ("completed", "stopped")


def _train_config(args):
    from tl_core.training.config import TrainConfig

    fields = {k: getattr(args, k) for k in _CFG_ARGS if getattr(args, k, None) is not None}
    if args.augment is not None:
        names = [a.strip().lower() for a in args.augment.split(",") if a.strip() and a.strip().lower() != "none"]
        unknown = [n for n in names if n not in _AUGMENT_NAMES]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}: use a list of {', '.join(_AUGMENT_NAMES)}")
        fields["augment"] = {_AUGMENT_NAMES[n]: True for n in names}
    if fields.get("weights", "pretrained") not in ("pretrained", "random"):
        raise ValueError(f"--weights must be pretrained or random, not {fields['weights']!r}")
    if "strategy" in fields:  # feature-extraction, Two-Phase: the names with underscores
        fields["strategy"] = fields["strategy"].strip().lower().replace("-", "_")
    import os

    from tl_core.training import config
    from tl_core import data

    fields.setdefault("data_root", data.UNRESTRICTED)  # the CLI's user owns the machine: any path
    os.environ[config.TRUSTED_ENV] = "1"  # this process, and the workers it starts, may read it
    cfg = TrainConfig(**fields)
    if cfg.modality == "text":  # the app's text defaults (fine-food, 500 per class, 64 tokens, 3 epochs); flags win
        cfg = config.default_text_config(**fields)
    cfg.validate(trusted=True)
    return cfg


def _epoch_line(m: dict, unit: str = "images") -> str:
    """One epoch's metrics row as a line; ``unit``: what the run reads (the run info's "images" or "texts")."""
    def f(key, fmt):
        return format(m[key], fmt) if isinstance(m.get(key), (int, float)) else "-"

    return (f"epoch {m.get('epoch')}  train loss {f('train_loss', '.4f')} acc {f('train_acc', '.3f')}  "
            f"val loss {f('val_loss', '.4f')} acc {f('val_acc', '.3f')}  {f('images_per_s', '.0f')} {unit}/s")


def _follow(store, run_id: str, log, foreground: bool = False) -> bool:
    """Follow a run until it ends: progress bar (terminal only), one line per epoch on ``log``.
    Ctrl-C requests a stop; a second Ctrl-C detaches (the run goes on) or, for a run in this process
    (``foreground``), ends it at once as stopped. Returns False if it detached or gave up."""
    import time

    from tqdm import tqdm

    from tl_core.runs.executor import reap

    bar, last_step, last_epoch, last_status, stopping = None, 0, 0, None, False
    tty = sys.stderr.isatty()
    try:
        while True:
            try:
                reap(store)  # a worker that died: its run ends as failed
                run = store.get(run_id)
                if (run.status, run.reason) != last_status and run.active and run.reason:
                    print(f"[{run_id}] {run.status}: {run.reason}", file=sys.stderr)
                last_status = (run.status, run.reason)
                unit = (run.info or {}).get("unit", "images")
                if bar is None and run.info:
                    i = run.info
                    print(f"[{run_id}] {i.get('backbone')} ({i.get('weights_label')}) on {i.get('device')}: "
                          f"{i.get('num_train')} train / {i.get('num_val')} val {unit}, {i.get('num_classes')} "
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
                    (bar.write if bar is not None and tty else print)(_epoch_line(row, unit), file=log)
                if not run.active:
                    return True
                time.sleep(0.1 if foreground else 0.25)
            except KeyboardInterrupt:
                if stopping and foreground:
                    store.finish(run_id, "stopped", "stopped by Ctrl-C (twice: before its current batch ended)")
                    print(f"run {run_id} stopped", file=sys.stderr)
                    return False
                if stopping:
                    print(f"detached; run {run_id} is still stopping (python -m tl_core runs)", file=sys.stderr)
                    return False
                stopping = True
                status = store.request_stop(run_id, teacher=True)
                print(f"stop requested ({status}); the run ends after the current batch. Ctrl-C again to "
                      + ("end it at once." if foreground else "detach."), file=sys.stderr)
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


def _store(args):
    """The run store of ``--runs-dir``, reaped (``executor.reap``); a damaged one is rebuilt, and that is said
    in one line on stderr."""
    from tl_core.runs.executor import reap
    from tl_core.runs.store import RunStore

    store = RunStore(args.runs_dir)
    if store.recovered:
        print(f"note: {store.recovered}", file=sys.stderr)
    reap(store)
    return store


def _train_here(store, cfg) -> str:
    """Register the run (no owner) and train it in a thread of this process once it holds its device
    slot; returns the run id at once. The main thread follows it (``_follow``) and takes Ctrl-C."""
    import os
    import threading

    from tl_core.runs import worker

    run_id = store.create(cfg)
    store.attach_worker(run_id, os.getpid())
    beat = worker.Heartbeat(store, run_id)
    beat.start()

    def train():
        try:
            worker.run(store, run_id, say=lambda line: None)  # the CLI shows the progress itself
        except BaseException as exc:  # outside the fit (the fit records its own ending)
            store.finish(run_id, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            beat.done.set()

    threading.Thread(target=train, name=f"run-{run_id}", daemon=True).start()
    return run_id


def cmd_train(args) -> int:
    from tl_core.runs.launcher import check_config, launch

    cfg = _train_config(args)  # bad arguments end here, before a run exists
    check_config(cfg)
    store = _store(args)
    if args.background:
        run_id = launch(cfg, store.runs_dir)
        print(json.dumps({"run_id": run_id, "status": store.get(run_id).status}) if args.json else run_id)
        print(f"run {run_id} queued for the warm workers (follow: python -m tl_core runs; "
              f"stop: python -m tl_core stop {run_id})", file=sys.stderr)
        return 0
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops the run, even if our parent ignored it
    run_id = _train_here(store, cfg)
    print(f"run {run_id} training in this process (stop: Ctrl-C, or python -m tl_core stop {run_id})", file=sys.stderr)
    log = sys.stderr if args.json else sys.stdout
    if not _follow(store, run_id, log, foreground=True):
        return 130
    summary = _run_summary(store.get(run_id))
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        unit = (store.get(run_id).info or {}).get("unit", "images")
        for k, v in summary.items():
            print(f"{k.replace('images', unit)}: {v}")  # a text run: texts_per_s (its JSON keeps images_per_s)
    if summary["status"] in _FINAL_STATUSES:
        return 0
    sys.stdout.flush()  # the reason is the last line, after the summary
    print(f"error: run {run_id} {summary['status']}: {_clean(summary['reason'])}", file=sys.stderr)
    return 1


def cmd_runs(args) -> int:
    import dataclasses
    import time

    store = _store(args)
    runs = store.list_runs()
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in runs], default=str))
        return 0
    rows = [{
        "id": r.id, "name": r.name, "status": r.status + (f" #{r.queue_position}" if r.queue_position else ""),
        "owner": r.owner or "", "device": r.device, "best_val_acc": (r.summary or {}).get("best_val_acc", ""),
        "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)), "reason": r.reason or "",
    } for r in runs]
    if rows:
        _print_table(rows, list(rows[0]))
    else:
        print(f"no runs in {store.runs_dir}")
    return 0


def cmd_stop(args) -> int:
    status = _store(args).request_stop(args.run_id, teacher=True)  # the CLI's user owns the machine
    note = " (stop requested: it ends after the current batch)" if status == "running" else ""
    print(f"{args.run_id}: {status}{note}")
    return 0


# --- registry --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    prog = "tl-lab" if Path(sys.argv[0]).name == "tl-lab" else "python -m tl_core"
    p = argparse.ArgumentParser(prog=prog, description="Transfer Learning Lab from the command line.")
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

    s = sub.add_parser("check-data", help="validate a user dataset: images (ImageFolder folder or .zip) or texts "
                                          "(a .csv, or a folder / .zip of .txt files per class)")
    s.add_argument("path", help="folder, .zip or .csv (any path: the command line reads the user's own files; "
                                "links inside it are followed only inside it)")
    s.add_argument("--data-root", default=None, help="only accept paths inside this folder (default: any path)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check_data)
    # <<< data commands

    # >>> training commands (tl_core.training.trainer / tl_core.runs.store)
    s = sub.add_parser("train", help="train in this process and follow it (Ctrl-C stops the run); "
                                     "--background: queue it for the warm workers")
    s.add_argument("--backbone")
    s.add_argument("--data", help="built-in dataset name, or a folder/zip (any path; a .csv for text); "
                                  "default animal_shapes, or fine_food for a text backbone")
    s.add_argument("--data-root", default=None, help="only accept --data inside this folder (default: any path)")
    s.add_argument("--strategy", help="e.g. feature_extraction (or feature-extraction), partial, full, two_phase")
    s.add_argument("--weights", help="pretrained (default) or random")
    s.add_argument("--weights-file", help="pretrained weights of the backbone (.safetensors, or .pth read "
                                          "with weights_only)")
    s.add_argument("--freeze-blocks", type=int)
    s.add_argument("--epochs", type=int, help="total over all phases (default 3)")
    s.add_argument("--head-epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--backbone-lr-mult", type=float)
    s.add_argument("--lr-decay", type=float)
    s.add_argument("--bn-mode", help="frozen or train")
    s.add_argument("--image-size", type=int)
    s.add_argument("--max-tokens", type=int, help="text backbones: texts are cut or padded to this many tokens "
                                                   "(default 64)")
    s.add_argument("--per-class", type=int, help="training samples per class (default: 100 images, or 500 texts "
                                                 "for a text backbone)")
    s.add_argument("--augment", nargs="?", const="flip,crop,jitter",
                   help="comma list of flip,crop,jitter (the flag alone: all three)")
    s.add_argument("--seed", type=int)
    s.add_argument("--device", help="auto (default), cpu, cuda")
    s.add_argument("--name")
    s.add_argument("--allow-download", action="store_true",
                   help="download pretrained weights that are not on this machine (needs a network)")
    s.add_argument("--runs-dir", default=None, help="run store folder (default: $TL_RUNS_DIR, else ./runs)")
    s.add_argument("--background", action="store_true",
                   help="queue the run for the warm workers, print its id and return at once")
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
    from tl_core.models.backbones import WeightsError

    try:
        return args.func(args)
    except (WeightsError, KeyError, ValueError, FileNotFoundError, PermissionError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
