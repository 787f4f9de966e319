"""Contracts every layer shares, pure and free of I/O: the events producers send, and the
layouts of the stores every consumer reads (`hot_layout`: Redis; `cold_layout`: CQL).
`sinks` (adapters) and `streams` (the worker) both build on them; nothing here imports
either."""
