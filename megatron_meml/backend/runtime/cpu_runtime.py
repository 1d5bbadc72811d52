"""Every adaptation that lets megatron-core run on a CPU-only machine (gloo), in one place.

Active only when ``torch.cuda.is_available()`` is False; :func:`activate` is a no-op on a GPU machine, so nothing
here can leak into the CUDA path. What it changes (``CHANGES`` lists the same; a test asserts each one):

1. A :class:`torch.overrides.TorchFunctionMode` pushed for the life of the process that rewrites CUDA device
   requests to the CPU: ``device="cuda"`` / ``torch.device("cuda", i)`` / a bare integer device in factory calls
   and ``Tensor.to``; ``Tensor.cuda()`` returns the tensor itself; ``pin_memory=True`` becomes False. This covers the
   hard-coded ``device="cuda"`` in pipeline schedules, optimizer, clip_grads, grad scaler, distributed optimizer,
   param/grad buffers, DDP, tensor_parallel.data, transformer.utils and core.utils without patching each site.
2. ``Tensor.type()`` with no argument reports ``torch.cuda.<X>Tensor`` for CPU tensors, because clip_grads and the
   mixed-precision optimizer assert ``param.grad.type() == 'torch.cuda.FloatTensor'``.
3. ``torch.cuda.current_device`` returns ``torch.device("cpu")`` (it is used as a device argument everywhere, e.g.
   RoPE ``inv_freq.to(...)``); ``set_device``/``synchronize``/``empty_cache`` become no-ops.
4. ``torch.cuda.Stream`` / ``Event`` / ``current_stream`` / ``stream`` get CPU stand-ins (0.19 DDP, the static
   inference engine and pipeline utils create them); events record wall-clock time.
5. The CUDA RNG used by megatron's RNG tracker is backed by the CPU default generator:
   ``torch.cuda.manual_seed``/``get_rng_state``/``set_rng_state`` and megatron's ``_get_cuda_rng_state`` /
   ``_set_cuda_rng_state``. Forks of the tracker save/restore the CPU generator, so dropout streams stay separate.
6. ``CUDA_DEVICE_MAX_CONNECTIONS=1`` in the environment when unset: megatron's TP linear layers warn on every run
   without it (advice about CUDA stream scheduling, which has no meaning on the CPU).
"""
from __future__ import annotations

import os
import time
from typing import Any, List

import torch
from torch.overrides import TorchFunctionMode

_ACTIVE = False
_MODE = None

CHANGES: List[str] = [
    "TorchFunctionMode: cuda device arguments -> cpu; Tensor.cuda() -> identity; pin_memory -> False",
    "Tensor.type() reports torch.cuda.* for CPU tensors",
    "torch.cuda.current_device -> torch.device('cpu'); set_device/synchronize/empty_cache -> no-op",
    "torch.cuda.Stream/Event/current_stream/stream -> CPU stand-ins",
    "CUDA RNG (torch.cuda + megatron tracker helpers) -> CPU default generator",
    "CUDA_DEVICE_MAX_CONNECTIONS=1 when unset (silences a CUDA-only scheduling hint)",
]


def _is_cuda_device(d: Any) -> bool:
    if isinstance(d, torch.device):
        return d.type == "cuda"
    if isinstance(d, str):
        return d.startswith("cuda")
    return isinstance(d, int) and not isinstance(d, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placement requests to the CPU (see module docstring, item 1 and 2)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not args[0].is_cuda and ".cuda." not in name else name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = torch.device("cpu")
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], torch.device("cpu")) + tuple(args[2:])
        return func(*args, **kwargs)


class _Event:
    """CPU stand-in for torch.cuda.Event: records wall-clock time, everything is already synchronous."""

    def __init__(self, enable_timing: bool = False, **_):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def wait(self, stream=None):
        pass

    def query(self):
        return True

    def elapsed_time(self, end: "_Event") -> float:
        return 1000.0 * (end.t - self.t)


class _Stream:
    """CPU stand-in for torch.cuda.Stream (CPU work is synchronous)."""

    def __init__(self, *_, **__):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        event = event or _Event()
        event.record()
        return event

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _noop():
    """A fresh no-op function (torch._dynamo's rule map rejects one function object under several names)."""
    def noop(*_, **__):
        return None
    return noop


def is_active() -> bool:
    return _ACTIVE


def activate() -> bool:
    """Install the CPU adaptations once per process. Returns True when active (CPU-only machine)."""
    global _ACTIVE, _MODE
    if _ACTIVE:
        return True
    if torch.cuda.is_available():
        return False
    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")
    cuda.set_device = _noop()
    cuda.synchronize = _noop()
    cuda.empty_cache = _noop()
    cuda.Event = _Event
    cuda.Stream = _Stream
    _default_stream = _Stream()
    cuda.current_stream = lambda device=None: _default_stream
    cuda.default_stream = lambda device=None: _default_stream
    cuda.stream = lambda s=None: (s or _default_stream)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = _noop()  # torch.manual_seed calls it after seeding the CPU generator
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state

    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)

    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")

    _MODE = _CudaToCpuMode()
    _MODE.__enter__()  # stays pushed for the life of the process
    _ACTIVE = True
    return True
