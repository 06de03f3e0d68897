"""The TFLite flatbuffer: its schema, graph editing, appended heads and standard metadata."""
