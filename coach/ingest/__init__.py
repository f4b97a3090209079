"""Telephony ingest: protocol framing only (handshake, auth, sequencing, close codes).

Each protocol turns its wire format into `AudioChunk`s for a `CallSession`; everything
after that is shared.
"""
