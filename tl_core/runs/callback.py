"""``StoreCallback``: the callback a worker hands to ``training.fit``. It writes every training event
into the run store (``tl_core.runs.store.RunStore``) and turns a stop request into ``trainer.should_stop``."""
from __future__ import annotations

import time
import traceback

STEP_EVERY_S = 0.5  # step rows are throttled to at most one per this interval


class StoreCallback:
    """Writes every training event into the store; turns a stop request into ``trainer.should_stop``."""

    def __init__(self, store, run_id: str, step_every_s: float = STEP_EVERY_S):
        self.store, self.run_id, self.step_every_s = store, run_id, step_every_s
        self._last_step_t = 0.0
        self._losses: list[float] = []
        self.t0 = time.time()
        self.summary: dict | None = None  # the trainer's summary, once after_fit has run

    def on(self, event: str, trainer, **data) -> None:
        handler = getattr(self, "_" + event, None)
        if handler is not None:
            handler(trainer, **data)
        if event != "after_batch" and self.store.stop_requested(self.run_id) and not trainer.should_stop:
            trainer.should_stop = "stopped by request"  # the trainer acts on it at its next check

    def _before_fit(self, trainer, info=None, **_):
        self.store.set_info(self.run_id, info or {})

    def _before_phase(self, trainer, **data):
        self.store.append_metric(self.run_id, "phase", {**data, "t": time.time() - self.t0})

    def _after_batch(self, trainer, step=None, epoch=None, batch=None, loss=None, lr=None, images=None, **_):
        if loss is not None:
            self._losses.append(float(loss))
        stop = self.store.stop_requested(self.run_id) and not getattr(trainer, "should_stop", None)
        now = time.time()
        if stop or now - self._last_step_t >= self.step_every_s:  # throttled; the row that sees a stop is not
            mean = sum(self._losses) / len(self._losses) if self._losses else None
            self.store.append_metric(self.run_id, "step", {
                "step": step, "epoch": epoch, "batch": batch, "loss": mean, "lr": lr,
                "images": images, "batches": len(self._losses), "t": now - self.t0, "stop": stop,
            })
            self._last_step_t, self._losses = now, []
        if stop:
            trainer.should_stop = "stopped by request"

    def _after_epoch(self, trainer, metrics=None, **_):
        self.store.append_metric(self.run_id, "epoch", {**(metrics or {}), "t": time.time() - self.t0})

    def _snapshot(self, trainer, epoch=0, maps=None, **_):
        if maps:
            self.store.save_snapshot(self.run_id, epoch, maps)

    def _after_fit(self, trainer, summary=None, predictions=None, **_):
        """Save the last validation's predictions and the model (not for a diverged or failed run: its
        weights are useless). On a Ray host ``trainer`` is a stub without a model: the host saves it."""
        self.summary = summary
        if (summary or {}).get("status") not in ("completed", "stopped"):
            return
        if predictions is not None:
            try:
                self.store.save_predictions(self.run_id, predictions)
            except Exception:  # the Inspect page recomputes them from the model; the log has the cause
                traceback.print_exc()
        if getattr(trainer, "model", None) is not None:
            from tl_core.training.checkpoint import save_model

            try:
                save_model(trainer.model, trainer.cfg, trainer.class_names, self.store.run_dir(self.run_id))
            except Exception:  # the metrics are still worth keeping; the log has the cause
                traceback.print_exc()

