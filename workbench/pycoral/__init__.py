"""A drop-in for the parts of Google's pycoral that on-device retraining scripts use.

pycoral has no wheels past Python 3.9. Scripts written for it keep working with their import
lines changed to this package, e.g. Coral's two retraining demos:

    from workbench.pycoral import classify, common            # pycoral.adapters
    from workbench.pycoral import ImprintingEngine            # pycoral.learn.imprinting.engine
    from workbench.pycoral import SoftmaxRegression           # pycoral.learn.backprop...
    from workbench.pycoral import make_interpreter            # pycoral.utils.edgetpu
    from workbench.pycoral import read_label_file             # pycoral.utils.dataset

Same names, arguments and semantics; the models written are Coral's formats.
"""

from workbench.pycoral import classify, common
from workbench.pycoral.edgetpu import list_edge_tpus, make_interpreter, read_label_file
from workbench.pycoral.imprinting import ImprintingEngine
from workbench.pycoral.softmax_regression import SoftmaxRegression

__all__ = [
    "ImprintingEngine",
    "SoftmaxRegression",
    "classify",
    "common",
    "list_edge_tpus",
    "make_interpreter",
    "read_label_file",
]
