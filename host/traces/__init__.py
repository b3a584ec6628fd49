"""Turning runs into numbers: trace tables, per-layer graph analysis, comparisons, Perfetto export.

- ``tables``: trace records -> pandas DataFrames with fixed schemas; ``load_run`` reads a run folder.
- ``graph``: per-op / per-block FLOPs, bytes, activation memory and roofline floors of a .tflite.
- ``compare``: per-layer comparison of variants, the ladder table, PSNR against the baseline image.
- ``perfetto``: a run's spans and memory samples as a Chrome JSON trace.
"""
