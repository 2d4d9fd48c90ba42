"""A bounded memory of requests answered lately: a re-sent request is answered, not re-run.

A client that fails over re-sends what it had not been answered under the same request id;
the ingest and the workers keep the answers of the last `size` requests by that id, so a copy
that reaches them after the original was answered gets the same answer again without being
executed twice. The bound makes it a window, not a promise: a copy arriving after `size` newer
requests were answered would run again (the client would drop the second answer).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["RecentAnswers"]

A = TypeVar("A")


# implements: SR-RED-002
class RecentAnswers(Generic[A]):
    """The answers of the last `size` requests, by request id (an empty id is never kept)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answers: OrderedDict[bytes, A] = OrderedDict()
        self.repeats = 0

    def keep(self, request_id: bytes, answer: A) -> None:
        """Remember the answer a request got."""
        if not request_id or self.size <= 0:
            return
        self._answers[request_id] = answer
        self._answers.move_to_end(request_id)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)

    def get(self, request_id: bytes) -> A | None:
        """The answer a request with this id got, if it is still remembered (a repeat)."""
        if not request_id:
            return None
        answer = self._answers.get(request_id)
        if answer is not None:
            self.repeats += 1
        return answer

    def __len__(self) -> int:
        return len(self._answers)
