"""The machine a run executes on: what it is (``machine``) and what was measured on it before (``choice_cache``).

Imports nothing, so importing one module of the package runs only that module's imports.
"""
