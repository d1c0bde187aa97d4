"""`python -m rag.search` runs :mod:`rag.cli.search` (the command-line tools live in :mod:`rag.cli`)."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("rag.cli.search", run_name="__main__", alter_sys=True)
