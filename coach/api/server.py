"""Run the app under uvicorn with the settings' host and port."""

from __future__ import annotations

import uvicorn

from coach.api.app import create_app
from coach.settings import Settings


def serve(settings: Settings) -> int:
    app = create_app(settings)
    # uvicorn's own WebSocket size limit sits well above ours so that the ingest handler sees
    # oversized frames itself and answers them with a logged 1009.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        ws_max_size=max(16 * 1024 * 1024, settings.max_frame_bytes * 4),
        timeout_graceful_shutdown=30,
        log_config=None,  # uvicorn logs through our handler (JSON when COACH_LOG_FORMAT=json)
    )
    return 0
