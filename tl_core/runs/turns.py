"""Turns: the runs that one warm worker holds at once take turns on its device, one batch at a time.

A class presses Launch within seconds; one run at a time makes the 30th student wait for 29 whole
runs before their first point. So a warm worker holds up to ``$TL_INTERLEAVE`` runs (each in its own
thread) and only the threads holding a turn compute: ``lanes`` of them at once (on a CPU, one per
core, each run then computing on one core: measured on 2 cores, two MobileNetV2 runs on one core each
train 189 images/s between them, one run on both cores 152). At every batch a holder hands its turn
to a waiting run that ranks before it. A run's rank is its stage, then its arrival:

- stage 0 (``NEW``): it has shown no metric yet (it loads its data and model, then trains one batch);
- stage *e*: it trains its *e*-th epoch.

So a newcomer's first point comes after the first points of those who came before it, not after
their whole runs; then the runs advance an epoch at a time, everyone's epoch 1 before anyone's
epoch 2, and a short run is not held behind a long one. The total work stays the same (identical runs
fill one copy of their frozen-prefix features between them: ``features.Fill``). One run alone never
waits. Example::

    turns = Turns()
    turns.join("a")                      # in claim order, before its thread starts
    # in run a's thread:
    turns.take("a"); fit(cfg, [TurnCallback(turns, "a")]); turns.leave("a")
"""
from __future__ import annotations

import itertools
import threading

NEW = 0


class Turns:
    """Who computes now among the runs of one worker (see the module docstring). Thread-safe."""

    def __init__(self, lanes: int = 1):
        self._cond = threading.Condition()
        self._ranks: dict[str, tuple[int, int]] = {}  # run id -> (stage, arrival)
        self._arrival = itertools.count()
        self.lanes = max(1, lanes)
        self.holders: set[str] = set()  # the runs computing now, at most ``lanes``

    def __len__(self) -> int:
        with self._cond:
            return len(self._ranks)

    def held(self) -> list[str]:
        """The runs held, in the order they will next get the turn."""
        with self._cond:
            return sorted(self._ranks, key=self._ranks.__getitem__)

    def newcomers(self) -> int:
        """Runs held that have not yet shown a metric."""
        with self._cond:
            return sum(stage == NEW for stage, _ in self._ranks.values())

    def join(self, run_id: str) -> None:
        """Hold ``run_id`` (call in arrival order, before its thread starts)."""
        with self._cond:
            self._ranks[run_id] = (NEW, next(self._arrival))

    def busy(self) -> int:
        """How many runs compute at once now: ``lanes``, or fewer when fewer runs are held."""
        with self._cond:
            return min(self.lanes, len(self._ranks))

    def _ahead(self, run_id: str) -> bool:
        """Whether ``run_id`` is among the ``lanes`` runs that rank first."""
        rank = self._ranks[run_id]
        return sum(other < rank for other in self._ranks.values()) < self.lanes

    def _wait_turn(self, run_id: str) -> None:
        self._cond.wait_for(lambda: len(self.holders) < self.lanes and self._ahead(run_id))
        self.holders.add(run_id)

    def take(self, run_id: str) -> None:
        """Block until it is ``run_id``'s turn."""
        with self._cond:
            self._wait_turn(run_id)

    def advance(self, run_id: str, stage: int) -> None:
        """A holder reached a batch boundary at ``stage``: hand its turn over if ``lanes`` runs rank before it."""
        with self._cond:
            old_stage, arrival = self._ranks[run_id]
            self._ranks[run_id] = (max(stage, old_stage), arrival)
            if not self._ahead(run_id):
                self.holders.discard(run_id)
                self._cond.notify_all()
                self._wait_turn(run_id)

    def leave(self, run_id: str) -> None:
        """``run_id`` ended (or never started): the next run gets the turn."""
        with self._cond:
            self._ranks.pop(run_id, None)
            self.holders.discard(run_id)
            self._cond.notify_all()


class TurnCallback:
    """A training callback: after each training or validation batch and before each later epoch, the run's
    epoch goes to ``turns`` (which may switch runs)."""

    def __init__(self, turns: Turns, run_id: str):
        self.turns, self.run_id = turns, run_id

    def on(self, event: str, trainer, **_) -> None:
        if event in ("after_batch", "after_val_batch") or (event == "before_epoch" and trainer.epoch > 1):
            self.turns.advance(self.run_id, trainer.epoch)
