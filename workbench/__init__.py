"""workbench: on-device transfer learning for Coral Edge TPU and TensorFlow Lite.

One call per command, plus the heads for users who already have embeddings:

    >>> import workbench as wb
    >>> result = wb.imprint("flowers/")
    >>> result = wb.backprop("flowers/", epochs=50, output="f.tflite")
    >>> report = wb.evaluate("f.tflite", "flowers/")
    >>> top = wb.classify("f.tflite", ["flowers/daisy"])
    >>> emb = wb.embed("flowers/")
    >>> frames = [r.top[0]["label"] for r in wb.live("f.tflite", source="flowers/daisy")]
    >>> head = wb.ImprintingHead.fit(emb.train_x, emb.train_y)
    >>> model, labels = head.export(emb.extractor, "out.tflite", labels=emb.classes)

See `workbench.run.api` and README.md ("Python API"). The examples run as doctests on a small
`flowers/` folder (tests/test_docs.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.core import __version__
from workbench.core.errors import WorkbenchError
from workbench.core.options import (
    BackpropOptions,
    DataOptions,
    ImprintOptions,
    OptionError,
    RunOptions,
)

# The rest is imported when first used: `workbench --version` and scripts that need one
# function do not pay for numpy, the runtime and every head (a second on a small board).
_LAZY = {
    "ImprintingHead": "workbench.heads.imprint_head",
    "SoftmaxHead": "workbench.heads.softmax_head",
    "Report": "workbench.report.record",
    "TrainingResult": "workbench.run.training",
    **dict.fromkeys(
        ("Embeddings", "backprop", "capture", "classify", "embed", "evaluate", "imprint", "live"),
        "workbench.run.api",
    ),
}

if TYPE_CHECKING:
    from workbench.heads.imprint_head import ImprintingHead
    from workbench.heads.softmax_head import SoftmaxHead
    from workbench.report.record import Report
    from workbench.run.api import (
        Embeddings,
        backprop,
        capture,
        classify,
        embed,
        evaluate,
        imprint,
        live,
    )
    from workbench.run.training import TrainingResult


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BackpropOptions",
    "DataOptions",
    "Embeddings",
    "ImprintOptions",
    "ImprintingHead",
    "OptionError",
    "Report",
    "RunOptions",
    "SoftmaxHead",
    "TrainingResult",
    "WorkbenchError",
    "__version__",
    "backprop",
    "capture",
    "classify",
    "embed",
    "evaluate",
    "imprint",
    "live",
]
