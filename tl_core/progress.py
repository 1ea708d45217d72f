"""Console progress for ``python -m tl_core train``: a callback that turns training events into a tqdm bar."""
from __future__ import annotations

import sys


class ConsoleProgress:
    """A tqdm progress bar for the terminal (``python -m tl_core train``): one bar over all steps,
    one line per phase and per epoch."""

    def __init__(self, file=None, disable: bool | None = None):
        self.file, self.disable, self.bar = file or sys.stderr, disable, None
        self.unit = "images"  # what a sample is: the run info's "unit" (images, or texts for a text run)

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.file)

    def on(self, event: str, trainer, **data) -> None:
        from tqdm import tqdm

        if event == "before_fit":
            i = data["info"]
            self.unit = i.get("unit", "images")
            self._write(f"{i['backbone']} ({i['weights_label']}) on {i['device']}: {i['num_train']} train / "
                        f"{i['num_val']} val {self.unit}, {i['num_classes']} classes, {i['total_epochs']} epochs")
            self.bar = tqdm(total=i["steps_per_epoch"] * i["total_epochs"], unit="step", file=self.file,
                            disable=self.disable, dynamic_ncols=True, leave=False)
        elif event == "before_phase":
            self._write(f"phase {data['phase']} ({data['name']}): {len(data['trainable'])} blocks trainable "
                        f"({data['trainable'] and data['trainable'][0]}..{data['trainable'] and data['trainable'][-1]}); "
                        f"{data['cache']}")
        elif event == "after_batch" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=data["epoch"], loss=f"{data['loss']:.3f}", lr=f"{data['lr']:.2e}", refresh=False)
        elif event == "after_epoch":
            m = data["metrics"]
            self._write(f"epoch {m['epoch']:>3}  train loss {m['train_loss']:.3f} acc {m['train_acc']:.3f}  "
                        f"val loss {m['val_loss']:.3f} acc {m['val_acc']:.3f}  {m['epoch_time']:.1f}s "
                        f"{m['images_per_s']:.0f} {self.unit}/s")
        elif event == "after_fit":
            if self.bar is not None:
                self.bar.close()
            s = data["summary"]
            acc = f"{s['final_val_acc']:.3f}" if s.get("final_val_acc") is not None else "-"
            self._write(f"{s['status']}: final val acc {acc} in {s['wall_s']:.1f}s"
                        + (f" ({s['reason']})" if s.get("reason") else ""))
