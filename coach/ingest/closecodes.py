"""WebSocket close codes used by every ingest endpoint (RFC 6455 plus application codes)."""

from coach.calls import TRANSIENT_REFUSALS

NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013
DUPLICATE_CALL = 4409
# A panel asked for a call that is neither live nor stored (like HTTP 404).
UNKNOWN_CALL = 4404
HEADER_TIMEOUT = 4408


def for_rejection(reason: str) -> int:
    """Close code for a call the manager refused (coach.calls.CallRejected.reason).

    At capacity or stopping (draining), the server cannot take the call now: 1013 "try
    again later", which tells a client to reconnect later or to another instance. Anything
    else is a conflict with a live call.
    """
    return TRY_AGAIN_LATER if reason in TRANSIENT_REFUSALS else DUPLICATE_CALL
