"""``data.loader=dali``: MEF batches from pre-tokenized shards (data/shards.py, python -m megatron_meml.pretokenize) through an
NVIDIA DALI pipeline.

The pipeline is one ``fn.external_source`` in parallel mode: a DALI worker process (started with ``spawn``, so it
never forks the training process with its process groups) runs :class:`_BatchSource`, which reads the rows of
pipeline iteration ``k`` = MEF step ``start + k`` from memory-mapped shards; DALI keeps ``data.prefetch`` batches
prepared ahead of the step that consumes them (``prefetch_queue_depth``). Outputs are the ragged int32 token and
uint8 mask lists of the global batch; collation (padding, truncation to ``data.seq_length``, target alignment)
stays in data/collate.py, so a batch is bit-for-bit the default loader's. DALI runs on the CPU here
(``device_id=None``): MEF batches are a few hundred KB of token ids, and the GPU stays with the model.

NVIDIA DALI is an optional dependency (``pip install .[dali]``, package ``nvidia-dali-cuda120``); without it the
run stops at setup with one line naming ``data.loader``.
"""
from __future__ import annotations

from collections import Counter
from typing import List, Tuple

import numpy as np

from ..config.schema import ConfigError
from .mef import describe_expert_counts
from .shards import ShardReader, check_meta, read_index, run_meta

Example = Tuple[List[int], List[int]]
INSTALL = "pip install '.[dali]' (NVIDIA DALI, e.g. nvidia-dali-cuda120)"


def import_dali():
    """``(fn, types, pipeline_def)`` of nvidia.dali, or a one-line ConfigError naming ``data.loader``."""
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
    except ImportError as e:
        raise ConfigError(f"config key `data.loader`: `dali` needs NVIDIA DALI, which is not importable here "
                          f"({e}); {INSTALL}, or set data.loader=default") from None
    return fn, types, pipeline_def


class _BatchSource:
    """DALI batch callback: BatchInfo -> (token arrays, mask arrays) of MEF step ``start + info.iteration``."""

    def __init__(self, reader: ShardReader, global_batch_size: int, start: int):
        self.reader, self.gbs, self.start = reader, global_batch_size, start

    def __call__(self, info):
        rows = self.reader.batch_rows(self.start + info.iteration, self.gbs)
        pairs = [self.reader.row(g) for g in rows]
        return [ids for ids, _ in pairs], [mask for _, mask in pairs]


class DaliMEFBatches:
    """``data.loader=dali`` (see module docstring); same interface as ``mef_batches.RenderedMEFBatches``."""

    def __init__(self, cfg, tokenizer, prompts):
        import_dali()
        folder = cfg.data.shards
        self.index = read_index(folder)
        check_meta(self.index, run_meta(cfg, tokenizer, prompts), folder)
        self.reader = ShardReader(folder, self.index)
        self.rows = self.reader.rows
        self.gbs, self.prefetch = cfg.data.global_batch_size, cfg.data.prefetch
        self._pipe, self._next = None, None

    def describe(self, num_experts: int) -> str:
        counts = Counter({int(e): n for e, n in self.index["experts"].items()})
        return describe_expert_counts(counts, num_experts) + f" [pre-tokenized, DALI: {self.reader.folder}]"

    def start(self, step: int) -> None:
        """Build the pipeline so that its first batch is MEF step ``step`` (a resumed run starts mid-stage)."""
        fn, types, pipeline_def = import_dali()

        @pipeline_def
        def mef_pipeline(source):
            tokens, mask = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                              parallel=True, dtype=[types.INT32, types.UINT8])
            return tokens, mask

        self._pipe = mef_pipeline(_BatchSource(self.reader, self.gbs, step), batch_size=self.gbs, num_threads=1,
                                  device_id=None, prefetch_queue_depth=self.prefetch, py_num_workers=1,
                                  py_start_method="spawn")
        self._pipe.build()
        self._next = step

    def batch(self, step: int) -> List[Example]:
        if self._pipe is None:
            self.start(step)
        if step != self._next:
            raise RuntimeError(f"DALI MEF loader: asked for step {step}, the pipeline is at step {self._next}")
        tokens, mask = self._pipe.run()
        self._next += 1
        return [(np.asarray(tokens[i]).tolist(), np.asarray(mask[i]).tolist()) for i in range(len(tokens))]

    def close(self) -> None:
        if self._pipe is not None:
            del self._pipe
            self._pipe = None
