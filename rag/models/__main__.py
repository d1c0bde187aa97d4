"""`python -m rag.models` runs :mod:`rag.cli.models` (the command-line tools live in :mod:`rag.cli`)."""

import runpy

runpy.run_module("rag.cli.models", run_name="__main__", alter_sys=True)
