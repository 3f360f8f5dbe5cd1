"""The HTTP API: thin FastAPI routes over the service modules in `blockstore/`."""
