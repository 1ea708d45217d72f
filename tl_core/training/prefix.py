"""The frozen-prefix feature cache: run the frozen start of a network once per image, train the rest.

When the frozen blocks form a prefix of the network whose output does not depend on the batch (no
random augmentation, BatchNorm statistics frozen, no dropout), the prefix is a fixed function of
the image. Three steps, each usable alone:

- ``plan_cache(model, hier, chain, plan, ...) -> CachePlan``: can a prefix be cached under this freeze
  plan, and if so which modules form the prefix and which the trained rest (``suffix``); if not, why.
- ``prefix_features(plan, model, images, transform, to_device, limit, key=None) -> (features | None, description)``:
  the prefix outputs of each image set (``{"train": images, "val": images}``), as lazily filled
  ``PrefixCache`` tensors, plus one line saying what was cached (or why not: too large). Given ``key``
  (the run's other key inputs, e.g. ``key_inputs(cfg)``), each set's features are also shared between
  runs through the ``feature_cache.FeatureStore`` of the run's runs folder: loaded when an earlier run stored
  them ("features reused from an earlier run"), else stored once the first epoch has filled them.
- ``phase_loaders(...)``: the phase's data loaders, over cached features or over images.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from tl_core.training import feature_store as feature_cache
from tl_core.models import surgery

CACHE_LIMIT_BYTES = int(1.5e9)  # cached prefix outputs (train + val) must fit in this
CACHED_VAL_BATCH = 256  # validation batch over cached features: only the small suffix runs, but a first
# validation fills the prefix outputs, and a run hands its turn over between batches (``turns``)


@dataclass
class CachePlan:
    """Whether the frozen prefix can be cached under a freeze plan (``ok``) and why (``why``, one line).
    When ok: ``prefix`` (images → features), ``suffix`` (features → logits), ``what`` the prefix runs,
    ``trains`` what the suffix trains, ``frozen_blocks`` how many leading blocks are frozen."""

    ok: bool
    why: str
    prefix: Callable | None = None
    suffix: Callable | None = None
    what: str = ""
    trains: str = ""
    frozen_blocks: int = 0


def _refuse(why: str) -> CachePlan:
    return CachePlan(False, f"not cached: {why}")


def _owners(hier: surgery.Hierarchy, element: str) -> set[int]:
    """Indices of the blocks that own (part of) the chain element named ``element``."""
    return {i for i, b in enumerate(hier.blocks) for m in b.members
            if element == m or element.startswith(m + ".") or m.startswith(element + ".")}


def _frozen_prefix_len(hier: surgery.Hierarchy, plan: surgery.FreezePlan) -> int:
    names = hier.block_names
    k = 0
    while k < len(names) and plan.blocks[names[k]].frozen:
        k += 1
    return k


def _split(model: nn.Module, hier: surgery.Hierarchy, chain, k: int) -> CachePlan:
    """Prefix (what runs once) and suffix (what trains) for ``k`` frozen leading blocks, or a refusal.
    The ``why`` of an accepted split is left for ``plan_cache`` to write."""
    if chain is not None:
        owners = [_owners(hier, n) for n, _ in chain]
        j = next((i for i, o in enumerate(owners) if o and max(o) >= k), len(chain))
        if j == 0:
            return _refuse("the frozen blocks do not start the network's chain")
        if j == len(chain):
            return _refuse("nothing trains after the frozen blocks")
        trains = chain[j][0] + (f"..{chain[-1][0]}" if j < len(chain) - 1 else "")
        return CachePlan(True, "", nn.Sequential(*[m for _, m in chain[:j]]), nn.Sequential(*[m for _, m in chain[j:]]),
                         f"{chain[0][0]}..{chain[j - 1][0]}", trains, k)
    if k == len(hier.block_names) - 1 and hasattr(model, "forward_head"):
        def prefix(x):
            return model.forward_head(model.forward_features(x), pre_logits=True)

        return CachePlan(True, "", prefix, model.get_classifier(), "forward_features + pre-logits", "the classifier", k)
    return _refuse("this architecture only caches when everything but the head is frozen")


def _random_module(model: nn.Module, split: CachePlan) -> nn.Module | None:
    """The first dropout (or drop-path) module with a non-zero rate in the prefix of ``split``."""
    mods = list(split.prefix) if isinstance(split.prefix, nn.Sequential) else [
        m for m in model.modules() if m is not split.suffix]
    for m in (x for mod in mods for x in mod.modules()):
        p = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "drop_prob", None)
        if p:
            return m
    return None


def plan_cache(model: nn.Module, hier: surgery.Hierarchy, chain, plan: surgery.FreezePlan, *,
               enabled: bool = True, augmented: bool = False) -> CachePlan:
    """What can be cached under ``plan``. ``chain`` is ``surgery.sequential_chain(model)`` (None for a
    ViT: then only a frozen everything-but-the-head caches); ``augmented``: random augmentation is on."""
    names = hier.block_names
    k = _frozen_prefix_len(hier, plan)
    if not enabled:
        return _refuse("cache_features is off")
    if k == 0:
        return _refuse("the first block trains, so there is no frozen prefix")
    if augmented:
        return _refuse("random augmentation changes the inputs every epoch")
    bn_train = [n for n in names[:k] if hier.block(n).has_bn and plan.blocks[n].bn_mode != "frozen"]
    if bn_train:
        return _refuse(f"BatchNorm statistics of frozen block {bn_train[0]} follow each batch "
                       "(bn_mode train), so its outputs depend on the batch")
    split = _split(model, hier, chain, k)
    if not split.ok:
        return split
    random = _random_module(model, split)
    if random is not None:
        return _refuse(f"dropout in the frozen part ({type(random).__name__}) is random in training")
    split.why = f"cached the output of {split.what} (frozen blocks {names[0]}..{names[k - 1]}); training {split.trains}"
    return split


HELP_CHUNK = 32  # images a run computes for the others while it waits for images another run is computing


class Fill:
    """Prefix outputs and which of them are computed: one per key, shared by every run of this process
    with that key (``LIVE``), so runs training at the same time (a warm worker's ``turns``) compute each
    image once between them, whichever run asks first. A run claims the images it will compute, computes
    them outside the lock (two runs computing at once fill two parts at once); while it waits for images
    another run has claimed, it computes images nobody has claimed yet. Identical runs ask for the same
    images in the same order, so without that the later ones would only wait for the first."""

    def __init__(self, n: int, out: torch.Tensor | None = None):
        self.out, self.cond = out, threading.Condition()
        self.done = torch.full((n,), out is not None, dtype=torch.bool)
        self.claimed = self.done.clone()


LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # key -> Fill, while a run holds it


class PrefixCache:
    """The outputs of a frozen prefix for a fixed set of images, computed once per image the first
    time a batch asks for it (so the first epoch trains from its first batch on) and kept for every
    later epoch. Indexed like a tensor: ``cache[idx]`` gives the prefix outputs of images ``idx``.
    Given ``out`` (features stored by an earlier run) it is full from the start and runs nothing; given
    ``fill`` (another live run's ``Fill`` of the same key) it shares it. ``on_full(out)`` is called once,
    when this cache fills the last image."""

    device = torch.device("cpu")  # where Batches puts the indices
    CHUNK = 128

    def __init__(self, prefix, model: nn.Module, images: torch.Tensor, transform, to_device,
                 out: torch.Tensor | None = None, on_full: Callable | None = None, fill: Fill | None = None):
        self.prefix, self.model, self.images, self.transform, self.to_device = prefix, model, images, transform, to_device
        self.on_full, self.reused = on_full, out is not None or fill is not None
        self.fill = fill or Fill(len(images), out)
        if self.fill.out is None:  # one image: the output shape, for the memory check
            first = self._run(torch.zeros(1, dtype=torch.long))
            self.shape, item = first.shape[1:], first[0].numel() * first.element_size()
        else:
            self.shape, item = self.fill.out.shape[1:], self.fill.out[0].numel() * self.fill.out.element_size()
        self.nbytes = item * len(images)

    @property
    def out(self) -> torch.Tensor | None:
        return self.fill.out

    @torch.no_grad()
    def _run(self, idx: torch.Tensor) -> torch.Tensor:
        was = self.model.training
        self.model.eval()  # the frozen part runs as at inference (no dropout, BatchNorm statistics fixed)
        try:
            return self.prefix(self.to_device(self.transform(self.images[idx]))).float()
        finally:
            self.model.train(was)

    def __len__(self) -> int:
        return len(self.images)

    def _fill(self, todo: torch.Tensor) -> bool:
        """Compute the images ``todo`` (claimed by this run), a chunk at a time; True if that filled the last one."""
        fill, full = self.fill, False
        try:
            for part in todo.split(self.CHUNK):
                out = self._run(part)
                with fill.cond:
                    if fill.out is None:
                        fill.out = torch.empty((len(self.images), *self.shape), dtype=out.dtype, device=out.device)
                    fill.out[part.to(out.device)] = out
                    fill.done[part] = True
                    full = bool(fill.done.all())
                    fill.cond.notify_all()
        except BaseException:
            with fill.cond:  # give back what this run claimed and did not compute
                fill.claimed[todo[~fill.done[todo]]] = False
                fill.cond.notify_all()
            raise
        return full

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        fill, full = self.fill, False
        while True:
            with fill.cond:
                if bool(fill.done[idx].all()):
                    break
                todo = idx[~fill.claimed[idx]]  # what this batch needs and nobody computes yet
                if not len(todo):  # all claimed by other runs: help with images not claimed yet meanwhile
                    todo = (~fill.claimed).nonzero().flatten()[:HELP_CHUNK]
                    if not len(todo):
                        fill.cond.wait_for(lambda: bool(fill.done[idx].all()) or not bool(fill.claimed[idx].all()))
                        continue
                fill.claimed[todo] = True
            full = self._fill(todo) or full
        if full and self.on_full is not None:
            self.on_full(fill.out)
            self.on_full = None
        return fill.out[idx.to(fill.out.device)]


def key_inputs(cfg) -> dict:
    """What of a ``TrainConfig`` goes into the shared features' key besides what ``prefix_features``
    hashes itself (prefix weights and depth, images, transform, device): data source and classes subset."""
    return {k: getattr(cfg, k, None) for k in ("backbone", "data", "classes", "image_size", "normalization")}


def _prefix_tensors(plan: CachePlan, model: nn.Module):
    """(name, tensor) of every parameter and buffer the prefix runs: the prefix module's state dict, or
    (a prefix that is a function of the whole model) the model's minus the suffix's."""
    if isinstance(plan.prefix, nn.Module):
        return plan.prefix.state_dict(keep_vars=True).items()
    suffix = plan.suffix.state_dict(keep_vars=True).values() if isinstance(plan.suffix, nn.Module) else ()
    suffix = {id(t) for t in suffix}
    return [(k, t) for k, t in model.state_dict(keep_vars=True).items() if id(t) not in suffix]


def entry_keys(plan: CachePlan, model: nn.Module, images: dict[str, torch.Tensor], transform, key: dict) -> dict | None:
    """The store key of each image set's prefix outputs: a sha256 of the prefix's weights (their values),
    architecture and depth, the set's exact images, the transform, the device type and precision, and
    ``key``. None when the transform has no stable description (a repr with a memory address)."""
    described = repr(transform)
    if " at 0x" in described:
        return None
    param = next(model.parameters(), torch.zeros(()))
    runs = plan.prefix if isinstance(plan.prefix, nn.Module) else model
    common = {"device": param.device.type, "dtype": str(param.dtype), "autocast": False,  # see PrefixCache._run
              **key, "prefix": plan.what, "frozen_blocks": plan.frozen_blocks,
              "weights": feature_cache.weights_digest(_prefix_tensors(plan, model)),
              "architecture": feature_cache.text_digest(repr(runs)), "transform": described, "torch": torch.__version__}
    return {k: feature_cache.entry_key({**common, "images": feature_cache.tensor_digest(x)}) for k, x in images.items()}


def _shared_cache(plan: CachePlan, model: nn.Module, images: torch.Tensor, transform, to_device,
                  store: feature_cache.FeatureStore | None, key: str | None) -> PrefixCache:
    """One image set's PrefixCache: loaded from ``store`` when there, else filled and then stored."""
    if store is None or key is None:
        return PrefixCache(plan.prefix, model, images, transform, to_device)
    live = LIVE.get(key)
    if live is not None and len(live.done) == len(images):  # a run training now fills them: share
        return PrefixCache(plan.prefix, model, images, transform, to_device, fill=live,
                           on_full=lambda out: store.store(key, out))
    stored = store.load(key)
    if stored is not None and len(stored) == len(images):
        out = stored.to(next(model.parameters(), stored).device)  # where the prefix would have put them
        cache = PrefixCache(plan.prefix, model, images, transform, to_device, out=out)
    else:
        cache = PrefixCache(plan.prefix, model, images, transform, to_device, on_full=lambda out: store.store(key, out))
    LIVE[key] = cache.fill
    return cache


def _describe(plan: CachePlan, caches: dict[str, PrefixCache], shared: bool, noun: str = "images") -> str:
    shape = tuple(next(iter(caches.values())).shape)
    count, total = sum(len(c) for c in caches.values()), sum(c.nbytes for c in caches.values())
    reused = [k for k, c in caches.items() if c.reused]
    if reused and len(reused) == len(caches):
        how = "features reused from an earlier run"
    elif reused:
        how = f"{' and '.join(reused)} features reused from an earlier run, the rest filled during the first epoch"
    else:
        how = "filled during the first epoch" + (", then kept for later runs" if shared else "")
    return f"{plan.why} ({count} {noun} x {shape} = {total / 2**20:.1f} MB, {how})"


def prefix_features(plan: CachePlan, model: nn.Module, images: dict[str, torch.Tensor], transform, to_device,
                    limit: int = CACHE_LIMIT_BYTES, key: dict | None = None, noun: str = "images",
                    runs_dir=None) -> tuple[dict[str, PrefixCache] | None, str]:
    """The frozen prefix's outputs for each image set in ``images`` (uint8 [N,C,H,W], run through
    ``transform`` then ``to_device``), filled as batches ask for them, and one line saying what was
    cached; (None, why not) when ``plan`` refuses or the features would take more than ``limit`` bytes.
    Given ``key`` (more key inputs, e.g. ``key_inputs(cfg)``), the features are shared between runs
    through the ``feature_cache.FeatureStore`` of the runs folder ``runs_dir`` (None: the default one;
    not when its size cap is 0). ``noun``: what the samples are called in that line ("images", or "texts")."""
    if not plan.ok:
        return None, plan.why
    store = feature_cache.FeatureStore(feature_cache.default_folder(runs_dir)) if key is not None else None
    keys = entry_keys(plan, model, images, transform, key) if store is not None and store.enabled else None
    store = store if keys is not None else None
    caches = {k: _shared_cache(plan, model, x, transform, to_device, store, keys and keys[k])
              for k, x in images.items()}
    total = sum(c.nbytes for c in caches.values())
    if total > limit:
        return None, (f"not cached: the frozen part's outputs would take {total / 2**20:,.0f} MB, "
                      f"over the {limit / 2**20:,.0f} MB limit")
    return caches, _describe(plan, caches, store is not None, noun)


class Batches(torch.utils.data.Dataset):
    """Tensors in memory, fetched a batch at a time (``__getitems__``): the transform runs on the
    whole uint8 batch at once, or per sample when it draws random augmentations."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None, per_sample: bool = False):
        self.x, self.y, self.transform, self.per_sample = x, y, transform, per_sample

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, idx: list[int]):
        i = torch.as_tensor(idx)
        x = self.x[i.to(self.x.device)]
        if self.transform is not None:
            x = torch.stack([self.transform(s) for s in x]) if self.per_sample else self.transform(x)
        return x, self.y[i.to(self.y.device)]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _identity(batch):
    return batch


def phase_loaders(model: nn.Module, cache: CachePlan, data: dict, dev, batch_size: int,
                  generator: torch.Generator, key: dict | None = None, runs_dir=None) -> dict:
    """Loaders (and the forward function) for a phase, over cached prefix outputs when ``cache`` allows.
    ``data``: the dict of ``training.prepare`` (ds, train_idx, val_idx, train_tf, eval_tf, augment);
    ``dev``: the run's ``devices.DevicePlan``; ``key``: share the features between runs (``key_inputs``)
    in the feature store of the runs folder ``runs_dir``. Returns {"train", "val", "forward", "cached", "why"}."""
    ds = data["ds"]
    idx = {"train": data["train_idx"], "val": data["val_idx"]}
    images, labels = {k: ds.images[i] for k, i in idx.items()}, {k: ds.labels[i] for k, i in idx.items()}
    if key is not None:
        key = {**key, "amp": str(dev.amp_dtype), "channels_last": dev.channels_last}
    noun = "texts" if hasattr(ds, "texts") else "images"  # a text_data.TextSet holds its texts
    feats, why = prefix_features(cache, model, images, data["eval_tf"], dev.move, key=key, noun=noun,
                                 runs_dir=runs_dir)
    if feats is not None:
        sets = {k: Batches(feats[k], labels[k].to(dev.device)) for k in idx}
        forward, pin, val_bs = cache.suffix, False, CACHED_VAL_BATCH
    else:
        sets = {"train": Batches(images["train"], labels["train"], data["train_tf"], per_sample=data["augment"].any),
                "val": Batches(images["val"], labels["val"], data["eval_tf"])}
        forward, pin, val_bs = model, dev.pin_memory, batch_size * 2
    mk = dict(num_workers=0, collate_fn=_identity, pin_memory=pin)
    return {
        "train": torch.utils.data.DataLoader(sets["train"], batch_size=batch_size, shuffle=True, generator=generator, **mk),
        "val": torch.utils.data.DataLoader(sets["val"], batch_size=val_bs, shuffle=False, **mk),
        "forward": forward, "cached": feats is not None, "why": why,
    }
