"""Runtime: process groups and the TP / PP / DP layout (``parallel.py``), the CPU adaptations that stay off when
CUDA is present (``cpu_runtime.py``), library version shims and Transformer Engine / apex detection
(``compat.py``), host names of a multi-node job (``hosts.py``), peak memory (``memory.py``) and the start-up lines
naming the kernels and optimizer a run uses (``runtime_info.py``)."""
