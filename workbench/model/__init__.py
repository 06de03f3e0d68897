"""Model files: writing a trained graph with its labels and metadata, cutting, evaluating heads.

May import `core`, `tflite`, `data` and `extract`. `export` (model bytes, metadata, labels,
the training files a model records), `surgery` (an extractor cut from a classifier),
`head_eval` (running an appended head alone on known extractor outputs).
"""
