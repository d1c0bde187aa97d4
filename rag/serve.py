"""`python -m rag.serve` runs :mod:`rag.cli.serve` (the command-line tools live in :mod:`rag.cli`)."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("rag.cli.serve", run_name="__main__", alter_sys=True)
