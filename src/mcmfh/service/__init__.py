"""HTTP search service: a FastAPI app over a ``SearchEngine`` (see ``engine.py``) plus a local web page."""
