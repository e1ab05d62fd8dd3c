"""Run untrusted generated code against its tests: the evaluator's security boundary.

This package imports only the standard library (never torch, never the rest of xdlm_tune), so
it can be audited on its own. ``execute`` / ``execute_many`` are the whole public interface;
see execute.py for the layers and docs/sandbox.md.
"""

from .execute import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, STATUSES, ExecResult, execute, execute_many

__all__ = ["DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT", "STATUSES", "ExecResult", "execute", "execute_many"]
