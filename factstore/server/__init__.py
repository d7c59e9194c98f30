"""The HTTP service: a FastAPI app over factstore.api (JSON under /api/v1, HTML pages at /)."""
