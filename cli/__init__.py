"""The `blockstore` command line: a typer app that talks HTTP to a running service.

An adapter outside the core, like `api/` and `nbd_plugin/`; it starts the service (`serve`) and
the bench, and otherwise calls the API through `cli.client.ApiClient`.
"""
