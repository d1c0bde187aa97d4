"""Local knowledge QA: load -> split -> embed -> index -> retrieve -> answer.

Importing ``rag`` loads no model and needs only the core dependencies; heavy objects load on first use.
"""

__version__ = "0.1.0"
