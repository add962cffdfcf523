"""The Python SDK (``RefgateClient``) and the ``refgate`` CLI."""
