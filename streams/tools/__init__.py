"""Tools that run beside the worker and that the worker never imports.

Replay, catalog sink, evaluation, report, monitor, the JSON Schema files of the wire records.
"""
