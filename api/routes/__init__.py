"""The API's routes, one module per resource, each an `APIRouter` that `create_app` includes.

A route only parses the request, calls the control plane (`blockstore.control`) and shapes the
answer; errors raised there become HTTP responses in one place, api/errors.py. Every route
under `/v1` requires the bearer token (`common.require_token`, after api/guard.py).
"""
