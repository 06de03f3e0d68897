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

__version__ = "0.1.0"

from workbench.core.errors import WorkbenchError
from workbench.core.options import (
    BackpropOptions,
    DataOptions,
    ImprintOptions,
    OptionError,
    RunOptions,
)
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
