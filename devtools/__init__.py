"""Tools for local runs and tests: starting the embedded broker and Redis."""
