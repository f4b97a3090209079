"""The coaching server: call sessions, pipelines, event bus, HTTP/WebSocket API and CLI."""

__version__ = "0.1.0"
