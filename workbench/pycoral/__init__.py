"""A drop-in for the parts of Google's pycoral that on-device retraining scripts use.

pycoral has no wheels past Python 3.9. Scripts written for it keep working with their import
lines changed to this package; each pycoral module has its counterpart here:

    pycoral.adapters.common                     -> workbench.pycoral.common
    pycoral.adapters.classify                   -> workbench.pycoral.classify
    pycoral.utils.edgetpu                       -> workbench.pycoral.edgetpu
    pycoral.utils.dataset                       -> workbench.pycoral.dataset
    pycoral.learn.imprinting.engine             -> workbench.pycoral.imprinting
    pycoral.learn.backprop.softmax_regression   -> workbench.pycoral.softmax_regression

e.g. `from workbench.pycoral import classify, common` or
`from workbench.pycoral.edgetpu import make_interpreter`. Same names, arguments, defaults,
results and exception types; the models written are Coral's formats.
"""

from workbench.pycoral import classify, common, dataset, edgetpu
from workbench.pycoral.dataset import read_label_file
from workbench.pycoral.edgetpu import (
    get_runtime_version,
    list_edge_tpus,
    load_edgetpu_delegate,
    make_interpreter,
    run_inference,
)
from workbench.pycoral.imprinting import ImprintingEngine
from workbench.pycoral.softmax_regression import SoftmaxRegression

__all__ = [
    "ImprintingEngine",
    "SoftmaxRegression",
    "classify",
    "common",
    "dataset",
    "edgetpu",
    "get_runtime_version",
    "list_edge_tpus",
    "load_edgetpu_delegate",
    "make_interpreter",
    "read_label_file",
    "run_inference",
]
