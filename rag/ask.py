"""`python -m rag.ask` runs :mod:`rag.cli.ask` (the command-line tools live in :mod:`rag.cli`)."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("rag.cli.ask", run_name="__main__", alter_sys=True)
