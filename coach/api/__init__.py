"""HTTP and WebSocket API (FastAPI): health, metrics, ingest, event streams, call REST."""
