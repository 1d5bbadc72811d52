"""Where MEF batches come from: ``data.loader`` picks the source, the MEF loop only asks for step ``s``'s batch.

Both sources give the global batch of step ``s`` as ``[(ids, mask), ...]`` (``data.global_batch_size`` rendered
conversations; every DP rank takes its slice in ``trainer.train_sft_step``), built from the same rows in the same
order: row ``(s * B + i) mod N`` of the run's shuffled MEF rows, so the loss is the same whichever source is used.

  * ``default``  :class:`RenderedMEFBatches`: renders and tokenizes each row in the training process when its step
                 comes (chat template + expert prompt, data/templates.py).
  * ``dali``     :class:`megatron_meml.data.dali_loader.DaliMEFBatches`: reads the rows pre-tokenized by
                 python -m megatron_meml.pretokenize through an NVIDIA DALI pipeline that prepares ``data.prefetch`` batches ahead
                 in a worker process.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from .mef import MEFRow, describe_mef_rows
from .templates import render

Example = Tuple[List[int], List[int]]


class RenderedMEFBatches:
    """``data.loader=default``: render rows on demand."""

    def __init__(self, rows: Sequence[MEFRow], tokenizer, template: Optional[str], prompts: Sequence[str],
                 global_batch_size: int):
        self.row_list, self.tokenizer, self.template, self.prompts = list(rows), tokenizer, template, list(prompts)
        self.gbs = global_batch_size
        self.rows = len(self.row_list)

    def describe(self, num_experts: int) -> str:
        return describe_mef_rows(self.row_list, num_experts)

    def start(self, step: int) -> None:
        """Nothing to prepare: rows are rendered when asked for."""

    def batch(self, step: int) -> List[Example]:
        batch = [self.row_list[(step * self.gbs + i) % self.rows] for i in range(self.gbs)]
        return [render(self.template, self.tokenizer, self.prompts[r.expert], r.question, r.response) for r in batch]

    def close(self) -> None:
        """Nothing to release."""
