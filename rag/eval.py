"""`python -m rag.eval` runs :mod:`rag.cli.eval` (the command-line tools live in :mod:`rag.cli`)."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("rag.cli.eval", run_name="__main__", alter_sys=True)
