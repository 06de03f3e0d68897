"""The images a run reads: class folders scanned, validated, capped and split; files decoded.

May import `core` and `tflite`. `dataset` (scan, split, fingerprints), `images` (decoding
and preprocessing, shared by training, evaluation, `classify` and the camera), `labels`
(labels files and the rules for class names), `download` (`workbench datasets get`).
"""
