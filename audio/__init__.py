"""Pure DSP for call audio: codecs, resampling, framing, voice activity and endpointing.

Nothing in this package does I/O or touches asyncio, so every function can be tested on
plain numpy arrays. Float32 in [-1, 1] inside; int16 or G.711 bytes only at the edges.
"""
