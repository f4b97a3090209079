"""Telephony ingest: protocol framing only (handshake, auth, sequencing, close codes).

Each protocol turns its wire format into `AudioChunk`s for a `CallSession`; everything
after that is shared.
"""

MAX_SKIPPED_AUDIO_S = 600.0
"""Audio a client may say it dropped beyond what time allows: Twilio's timestamps that jump
past a track's audio, in all (Twilio sends audio all through a call, silence and hold
included); AudioHook's `discarded` and `resumed` beyond the time the session has been
connected. The call clock is moved past what was dropped, so past this the clock is
malformed: thirty jumps of 599 s, or one `discarded` of 999999999 s, ended a call as if it
had run for its maximum length, stored as a 4-hour call (an outside ingest audit)."""
