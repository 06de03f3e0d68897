"""The TFLite flatbuffer: its schema, graph editing, quantization, appended heads, metadata.

May import `workbench.core` only. `graph.Graph` reads, edits and writes a model; `heads`
appends the imprinting and softmax-regression layers; `quant` the 8-bit arithmetic;
`metadata` the standard TFLite metadata (names, labels, normalization). `generated/` holds
flatc's output for the metadata schema, regenerated rather than edited.
"""
