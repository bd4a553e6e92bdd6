"""AWS event-stream frames (Bedrock's streams) out of answer chunks cut anywhere; botocore's parser checks each frame's CRCs."""

from __future__ import annotations

from typing import Any


class FrameReader:
    def __init__(self) -> None:
        self._buffer: Any = None

    def feed(self, data: bytes) -> tuple[list[Any], bool]:
        """The frames `data` completes, and whether a corrupt one was met (what followed it in the buffer is dropped)."""
        from botocore.eventstream import EventStreamBuffer, ParserError

        if self._buffer is None:
            self._buffer = EventStreamBuffer()
        self._buffer.add_data(data)
        frames: list[Any] = []
        try:
            frames.extend(self._buffer)
        except ParserError:
            self._buffer = EventStreamBuffer()
            return frames, True
        return frames, False
