"""Host side of the channel protocol (see :mod:`sandlot.agent.protocol` for the wire format)."""

from .base import ChannelLike, RequestLike
from .connection import Channel, Request

__all__ = ["Channel", "ChannelLike", "Request", "RequestLike"]
