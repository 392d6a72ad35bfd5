"""The error codes a command reply can carry; ``docs/protocol.md`` describes each."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # The frame or its encoding.
    BAD_FRAME = "BAD_FRAME"  # neither JSON nor length-prefixed CBOR, or not a map
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    # The request's fields, judged without looking at balances.
    INVALID_REQUEST = "INVALID_REQUEST"  # missing or unknown field, wrong type
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    UNKNOWN_CURRENCY = "UNKNOWN_CURRENCY"
    INVALID_AMOUNT = "INVALID_AMOUNT"  # non-finite, negative, zero, too precise, too large
    INVALID_INDEX = "INVALID_INDEX"  # out of range, or a slot the command may not touch
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"  # request_id reused for another request
    # The ledger's verdict.
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    SLOT_OWNED = "SLOT_OWNED"  # the slot belongs to another strategy
    TRANSFER_CLAIMED = "TRANSFER_CLAIMED"  # an adjust already took this ref_id's transfer
    # The gateway's condition.
    PERMISSION_DENIED = "PERMISSION_DENIED"  # peer uid not allowed
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    UNAVAILABLE = "UNAVAILABLE"  # the journal cannot be written: nothing was changed
    # A mirror's (``gateway mirror``) commands go through Redis to the gateway.
    UNREACHABLE = "UNREACHABLE"  # Redis or the gateway is out of reach: nothing was sent
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"  # sent, no answer in time: resend the same request_id
