"""Under numba's workqueue layer two parallel kernels running at once abort the process,
so fastconv calls each of its parallel kernels under ``_runtime.parallel_guard`` (a lock
there): every parallel kernel a training step calls from Python runs under the guard,
never one inside another's."""

import importlib
import pkgutil

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import fastconv
from fastconv import _runtime, models, optim
from fastconv.nn import functional as F

from .conftest import CountingGuard


class _Checked:
    """A parallel kernel that notes the calls made outside the guard (other attributes,
    e.g. ``py_func``, are the kernel's)."""

    def __init__(self, kernel, name, guard, unguarded):
        self._kernel, self._name, self._guard, self._unguarded = kernel, name, guard, unguarded

    def __call__(self, *args, **kwargs):
        if not self._guard.held:
            self._unguarded.append(self._name)
        return self._kernel(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._kernel, name)


def _host_modules():
    for info in pkgutil.walk_packages(fastconv.__path__, "fastconv."):
        if not any(part in info.name for part in (".cuda", ".dask", ".tools", "__main__")):
            yield importlib.import_module(info.name)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_a_training_step_calls_every_parallel_kernel_under_the_guard(layout, monkeypatch):
    guard, unguarded = CountingGuard(), []
    monkeypatch.setattr(_runtime, "REQUESTED_THREADING_LAYER", "workqueue")
    monkeypatch.setattr(_runtime, "_workqueue_lock", guard)
    checked = {}
    for module in _host_modules():
        for name, obj in list(vars(module).items()):
            if isinstance(obj, CPUDispatcher) and obj.targetoptions.get("parallel"):
                wrapper = checked.setdefault(id(obj), _Checked(obj, name, guard, unguarded))
                monkeypatch.setattr(module, name, wrapper)
    # a small ResNet: Winograd and direct 3x3 layers, stride 2, 1x1 shortcuts, batch norm
    model = models.resnet_small(num_classes=10, in_channels=1, widths=(16, 32),
                                layout=layout, rng=np.random.default_rng(0))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(1).standard_normal((8, 1, 12, 12)).astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), np.arange(8) % 10).backward()
        opt.step()
    assert guard.calls > 10 and not guard.held
    assert unguarded == []
