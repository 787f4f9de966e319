"""Contracts every layer shares, pure and free of I/O: the events producers send, the
rank-refresh triggers the worker sends, the layouts of the stores every consumer reads
(`hot_layout`: Redis; `cold_layout`: CQL; `feature_layout`: the online features), and the
one definition of the rolling features (`features`), which the worker, the read client and
the offline computation share. `sinks` (adapters) and `streams` (the worker) both build on
them; nothing here imports either."""
