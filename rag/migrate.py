"""`python -m rag.migrate` runs :mod:`rag.cli.migrate` (the command-line tools live in :mod:`rag.cli`)."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("rag.cli.migrate", run_name="__main__", alter_sys=True)
