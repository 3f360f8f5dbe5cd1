"""The HTTP API, an adapter over the core: `app.create_app` assembles the routes (`routes/`, one
module per resource), the front door (`guard`: token, body cap), the one mapping of errors to
HTTP (`errors`) and `/metrics` (`metrics`); `serve` is `blockstore serve` (uvicorn)."""
