"""tl_core against the plain loop of PyTorch's transfer-learning tutorial, in one process.

The plain loop (``transfer_learning_tutorial``, "ConvNet as fixed feature extractor"):
torchvision MobileNetV2 with the bundled ImageNet weights, every parameter frozen except a new
final layer, SGD lr 0.001 momentum 0.9 with StepLR(7, 0.1), ImageFolder + per-image PIL
transforms, and the full network's forward pass on every batch of every epoch (train phase in
``model.train()``, then a validation phase). Both sides get the same images: 1,000 training
silhouettes from animal shapes (100 per class) written as PNGs, the same validation images, 96 px,
no augmentation, the same number of epochs.

    python benchmarks/bench_feature_extraction.py            # 20 epochs feature extraction, 3 fine-tuning
    python benchmarks/bench_feature_extraction.py --quick    # 5 and 1
    python benchmarks/bench_feature_extraction.py --whole-process   # each side timed as a whole process
    python benchmarks/bench_feature_extraction.py --cache-key       # hashing a feature-cache key, cold and warm

Caches start cold (a fresh runs folder, feature cache and decoded-data cache); ``--warm`` fills them with an
untimed first pass of each tl_core run. Results go to ``benchmarks/results/feature_extraction[_quick].json``,
``feature_extraction_whole_process.json`` and ``feature_cache_key.json`` (``benchmarks/_results.py``).

``--whole-process`` times ``python -m tl_core train ...`` from start to exit (imports, data, the run in the
store, the saved model) against the plain loop in a process of its own, on the CLI's split (20% validation).

Prints a markdown table: wall time, validation accuracy, training throughput and peak memory.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TL_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _results  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import transforms  # noqa: E402

from tl_core.models import backbones
from tl_core import data
from tl_core.devices import cores  # noqa: E402
from tl_core.training import trainer as training  # noqa: E402
from tl_core.training.config import TrainConfig  # noqa: E402


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms), in MB."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def write_pngs(ds: data.ImageSet, idx: torch.Tensor, folder: Path) -> None:
    for i in idx.tolist():
        d = folder / ds.class_names[int(ds.labels[i])]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.images[i, 0].numpy()).save(d / f"{i:05d}.png")


def plain_loop(root: Path, epochs: int, image_size: int, finetune: bool) -> dict:
    """The tutorial's train_model, minus the printing and the best-weights copy."""
    dcfg = backbones.data_config("mobilenetv2")
    tf = transforms.Compose([
        transforms.Resize(int(image_size / dcfg["crop_pct"])), transforms.CenterCrop(image_size),
        transforms.ToTensor(), transforms.Normalize(dcfg["mean"], dcfg["std"]),
    ])
    sets = {p: torchvision.datasets.ImageFolder(str(root / p), tf) for p in ("train", "val")}
    loaders = {p: torch.utils.data.DataLoader(sets[p], batch_size=32, shuffle=(p == "train"), num_workers=0)
               for p in sets}
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(backbones.weight_status("mobilenetv2").source, weights_only=True))
    if not finetune:
        for p in model.parameters():
            p.requires_grad = False
    model.classifier[1] = nn.Linear(model.last_channel, len(sets["train"].classes))
    params = model.parameters() if finetune else model.classifier[1].parameters()
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    train_time, accs = 0.0, []
    t0 = time.perf_counter()
    for _ in range(epochs):
        for phase in ("train", "val"):
            model.train(phase == "train")
            correct, t = 0, time.perf_counter()
            for x, y in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    out = model(x)
                    loss = criterion(out, y)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                correct += (out.argmax(1) == y).sum().item()
            if phase == "train":
                scheduler.step()
                train_time += time.perf_counter() - t
            else:
                accs.append(correct / len(sets["val"]))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "val_acc": accs[-1], "best_val_acc": max(accs),
            "images_per_s": epochs * len(sets["train"]) / train_time}


def tl_run(epochs: int, image_size: int, val_fraction: float, warm: bool = False, **kw) -> dict:
    cfg = TrainConfig(backbone="mobilenetv2", data="animal_shapes", per_class=100, val_fraction=val_fraction,
                               image_size=image_size, epochs=epochs, batch_size=32, seed=0, **kw)
    if warm:  # an untimed first pass fills the feature cache
        training.fit(cfg)
    t0 = time.perf_counter()
    s = training.fit(cfg)
    assert s["status"] == "completed", s["reason"]
    return {"wall_s": time.perf_counter() - t0, "val_acc": s["final_val_acc"], "best_val_acc": s["best_val_acc"],
            "images_per_s": s["images_per_s"], "cache": s["cache"][0]}


def first_metric_latency(image_size: int) -> dict:
    """Seconds from ``launcher.launch`` until the store holds the default feature-extraction run's first
    per-step loss row, and its first epoch row."""
    from _latency import first_metric

    from tl_core.runs import executor
    from tl_core.runs.store import RunStore

    with tempfile.TemporaryDirectory(prefix="tl_bench_runs_") as tmp:
        cfg = TrainConfig(backbone="mobilenetv2", data="animal_shapes", per_class=100,
                                   image_size=image_size, epochs=3, seed=0)
        try:
            return first_metric(cfg, tmp)
        finally:  # no worker left behind
            store = RunStore(tmp)
            try:
                executor.stop_pool(store)
            finally:
                store.close()


def _process(cmd: list[str]) -> tuple[float, dict]:
    """Wall seconds of a whole process, and the JSON of its last stdout line."""
    import json
    import subprocess

    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "TL_OFFLINE": "1", "OPENBLAS_NUM_THREADS": "1"})
    return time.perf_counter() - t0, json.loads(out.stdout.strip().splitlines()[-1])


def cache_key_timing(image_size: int, caches: str) -> dict:
    """Seconds to compute the feature-cache keys (``prefix.entry_keys``) of 1,000 images (800 train, 200
    validation) and a MobileNetV2 prefix: the first time (every tensor hashed: cold) and again (the digests
    remembered per tensor: warm)."""
    import timm
    from tl_core.models import arch, surgery
    from tl_core.training import prefix

    model = timm.create_model("mobilenetv2_100", num_classes=10).eval()
    hier = surgery.hierarchy(model, image_size)
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=len(hier.block_names) - 1)
    surgery.apply_plan(model, hier, plan)
    cache = prefix.plan_cache(model, hier, surgery.sequential_chain(model, 64), plan)
    _, eval_tf = data.make_transforms(arch.data_config_for("mobilenetv2_100", model), image_size)
    gen = torch.Generator().manual_seed(0)
    images = {"train": torch.randint(0, 256, (800, 3, image_size, image_size), dtype=torch.uint8, generator=gen),
              "val": torch.randint(0, 256, (200, 3, image_size, image_size), dtype=torch.uint8, generator=gen)}
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        prefix.entry_keys(cache, model, images, eval_tf, {"data": "animal_shapes"})
        times.append(time.perf_counter() - t0)
    print(f"feature-cache keys of 1,000 images at {image_size} px and a MobileNetV2 prefix: "
          f"{times[0]:.3f} s first, {times[1]:.3f} s again")
    _results.write("feature_cache_key", {"cold_s": times[0], "warm_s": times[1]}, caches=caches,
                   params={"images": 1000, "image_size": image_size, "backbone": "mobilenetv2_100"},
                   notes="cold_s: every tensor hashed; warm_s: the same call again (digests remembered per tensor)")
    return {"cold_s": times[0], "warm_s": times[1]}


def whole_process(epochs: int, image_size: int, caches: str) -> int:
    """Feature extraction from the CLI against the plain loop, each timed as a whole process."""
    ds = data.load_dataset("animal_shapes")
    train_idx, val_idx = data.split(ds, 0.2, seed=0, per_class=100)  # the CLI's split
    with tempfile.TemporaryDirectory(prefix="tl_bench_") as tmp:
        root = Path(tmp)
        write_pngs(ds, train_idx, root / "train")
        write_pngs(ds, val_idx, root / "val")
        cli = [sys.executable, "-m", "tl_core", "train", "--backbone", "mobilenetv2", "--data",
               "animal_shapes", "--strategy", "feature_extraction", "--epochs", str(epochs),
               "--per-class", "100", "--image-size", str(image_size), "--runs-dir", str(root / "runs"), "--json"]
        if caches == "warm":  # an untimed first run fills the feature and decoded-data caches
            _process(cli)
        tl_wall, tl = _process(cli)
        plain_wall, plain = _process([sys.executable, __file__, "--plain-only", str(root), "--epochs", str(epochs),
                                      "--image-size", str(image_size)])
    print("\n| whole process | wall s | val acc (final / best) |")
    print("|---|---:|---:|")
    print(f"| `python -m tl_core train` feature extraction, {epochs} ep | {tl_wall:.1f} | "
          f"{tl['final_val_acc']:.3f} / {tl['best_val_acc']:.3f} |")
    print(f"| plain loop, frozen backbone, {epochs} ep | {plain_wall:.1f} | "
          f"{plain['val_acc']:.3f} / {plain['best_val_acc']:.3f} |")
    print(f"\nwhole-process speed-up: {plain_wall / tl_wall:.1f}x")
    _results.write("feature_extraction_whole_process",
                   {"tl_core_wall_s": tl_wall, "plain_wall_s": plain_wall, "speedup_x": plain_wall / tl_wall,
                    "tl_core_val_acc": tl["final_val_acc"], "tl_core_best_val_acc": tl["best_val_acc"],
                    "plain_val_acc": plain["val_acc"], "plain_best_val_acc": plain["best_val_acc"],
                    "train_images": len(train_idx), "val_images": len(val_idx)},
                   caches=caches, params={"epochs": epochs, "image_size": image_size})
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20, help="feature-extraction epochs (default 20)")
    ap.add_argument("--finetune-epochs", type=int, default=3, help="full fine-tuning epochs (default 3; 0 skips)")
    ap.add_argument("--quick", action="store_true", help="5 feature-extraction epochs, 1 fine-tuning epoch")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--val-fraction", type=float, default=0.05, help="validation share of each class (default 0.05)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--whole-process", action="store_true", help="time each side as a whole process")
    ap.add_argument("--cache-key", action="store_true", help="only time the feature-cache key (cold, then warm)")
    _results.add_warm_flag(ap)
    ap.add_argument("--plain-only", metavar="ROOT", help=argparse.SUPPRESS)  # the plain loop's own process
    args = ap.parse_args(argv)
    if args.plain_only:
        import json

        r = plain_loop(Path(args.plain_only), args.epochs, args.image_size, finetune=False)
        print(json.dumps({k: r[k] for k in ("val_acc", "best_val_acc")}))
        return 0
    with _results.isolated_caches():
        if args.cache_key:
            cache_key_timing(args.image_size, _results.caches(args))
            return 0
        if args.whole_process:
            return whole_process(args.epochs, args.image_size, _results.caches(args))
        return in_process(args)


def in_process(args) -> int:
    warm = _results.caches(args) == "warm"
    if args.quick:
        args.epochs, args.finetune_epochs = 5, 1
    threads = args.threads or cores()
    torch.set_num_threads(threads)

    ds = data.load_dataset("animal_shapes")
    train_idx, val_idx = data.split(ds, args.val_fraction, seed=0, per_class=100)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tl_bench_") as tmp:
        root = Path(tmp)
        write_pngs(ds, train_idx, root / "train")
        write_pngs(ds, val_idx, root / "val")
        print(f"{len(train_idx)} train / {len(val_idx)} val images, {args.image_size} px, {threads} threads, "
              f"torch {torch.__version__}", file=sys.stderr)

        def measure(label, fn, **kw):
            with PeakRSS() as mem:
                r = fn(**kw)
            r["peak_rss_mb"] = mem.peak
            rows.append((label, r))
            print(f"  {label}: {r['wall_s']:.1f} s, val acc {r['val_acc']:.3f}", file=sys.stderr)
            return r

        E = args.epochs
        fe_kw = dict(epochs=E, image_size=args.image_size, val_fraction=args.val_fraction, warm=warm)
        tl = measure(f"tl_core feature_extraction (defaults: AdamW, cosine), {E} ep", tl_run,
                     strategy="feature_extraction", **fe_kw)
        tl_sgd = measure(f"tl_core feature_extraction (SGD 0.001 m 0.9 like the tutorial), {E} ep", tl_run,
                         strategy="feature_extraction", optimizer="sgd", lr=0.001, schedule="constant", **fe_kw)
        plain = measure(f"plain loop, frozen backbone, {E} ep", plain_loop, root=root, epochs=E,
                        image_size=args.image_size, finetune=False)
        F = args.finetune_epochs
        if F:
            pf = measure(f"plain loop, full fine-tuning, {F} ep", plain_loop, root=root, epochs=F,
                         image_size=args.image_size, finetune=True)
            tf = measure(f"tl_core full (SGD 0.001 m 0.9), {F} ep", tl_run, strategy="full", optimizer="sgd", lr=0.001,
                         schedule="constant", epochs=F, image_size=args.image_size, val_fraction=args.val_fraction,
                         warm=warm)

    print("\n| run | wall s | val acc (final / best) | train img/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['wall_s']:.1f} | {r['val_acc']:.3f} / {r['best_val_acc']:.3f} | "
              f"{r['images_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    print(f"\nfeature extraction speed-up (plain wall / tl_core wall): {plain['wall_s'] / tl['wall_s']:.1f}x "
          f"(SGD variant {plain['wall_s'] / tl_sgd['wall_s']:.1f}x); val acc {tl['val_acc']:.3f} vs {plain['val_acc']:.3f}")
    if F:
        print(f"full fine-tuning throughput (tl_core / plain): {tf['images_per_s'] / pf['images_per_s']:.2f}x; "
              f"wall {tf['wall_s']:.1f} s vs {pf['wall_s']:.1f} s")
    print(f"tl_core cache: {tl['cache']}")
    lat = first_metric_latency(args.image_size)
    print(f"launch -> first step metric in the store: {lat.get('step_s', float('nan')):.1f} s; "
          f"first epoch row: {lat.get('epoch_s', float('nan')):.1f} s (new worker process, default run)")
    keys = {"tl_core_fe_adamw": tl, "tl_core_fe_sgd": tl_sgd, "plain_fe": plain}
    if F:
        keys.update(plain_full=pf, tl_core_full_sgd=tf)
    figures = {f"{k}.{m}": r[m] for k, r in keys.items()
               for m in ("wall_s", "val_acc", "best_val_acc", "images_per_s", "peak_rss_mb")}
    figures["fe_speedup_x"] = plain["wall_s"] / tl["wall_s"]
    figures["fe_sgd_speedup_x"] = plain["wall_s"] / tl_sgd["wall_s"]
    if F:
        figures["full_throughput_x"] = tf["images_per_s"] / pf["images_per_s"]
    figures.update({f"first_metric_new_process.{k}": v for k, v in lat.items()})
    figures.update(train_images=len(train_idx), val_images=len(val_idx), tl_core_cache=str(tl["cache"]))
    _results.write("feature_extraction_quick" if args.quick else "feature_extraction", figures,
                   caches=_results.caches(args),
                   params={"epochs": E, "finetune_epochs": F, "image_size": args.image_size,
                           "val_fraction": args.val_fraction, "threads": threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
