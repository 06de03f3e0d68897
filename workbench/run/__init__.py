"""The commands' work, over every layer below: a training run from folder to written files.

`training` (the one runner: split, embed, fit, export, evaluate, write), `trainers` and
`continuing` (the heads it fits), `evaluate`, `classify`, `curve`, `bench`, and `api` (the
functions `import workbench as wb` offers). Only `workbench.cli` and `workbench` itself
import from here.
"""
