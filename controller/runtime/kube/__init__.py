"""The API boundary: the only package that speaks HTTP to the API server."""
