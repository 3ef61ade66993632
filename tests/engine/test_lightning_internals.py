"""The engine reads Lightning through its public API, except one isolated loop internal.

Each test here fails loudly when a Lightning upgrade changes what the engine relies on.
"""

import re
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from effdetmask.engine.trainer import batches_done_in_epoch

ENGINE = Path(__file__).resolve().parents[2] / "projects" / "EffDetMask" / "effdetmask" / "engine"


class _Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Record(Callback):
    def __init__(self) -> None:
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, batch_idx, batches_done_in_epoch(trainer)))


def test_batches_done_in_epoch_counts_finished_batches_of_a_real_fit():
    record = _Record()
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[record])
    trainer.fit(_Linear(), DataLoader(torch.randn(6, 2), batch_size=2))
    assert record.seen == [(e, b, b + 1) for e in range(2) for b in range(3)]


def test_engine_reads_no_other_lightning_internals():
    """Loop objects and underscore attributes of the Trainer appear only in
    ``batches_done_in_epoch``."""
    pattern = re.compile(r"\.(fit_loop|_\w+loop\w*|_should_accumulate|_accelerator_connector)\b")
    uses = [f"{path.name}:{n}" for path in sorted(ENGINE.glob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert len(uses) == 1 and uses[0].startswith("trainer.py:"), uses
