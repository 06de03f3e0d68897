"""From images to embeddings: the TFLite runtime, Edge TPU delegates, the cache, extraction.

May import `core`, `tflite` and `data`. `runtime` (interpreters, replicas, devices),
`embeddings` (decoding ahead of invokes), `cache` (extractor outputs on disk), `extraction`
(a split's images embedded once, unreadable ones dropped before the split).
"""
