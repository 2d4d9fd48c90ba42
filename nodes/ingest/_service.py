"""What serving a request costs, measured from the workers' own reports of each batch."""

from __future__ import annotations

from collections import deque

__all__ = ["PACE_NS", "ServiceModel"]

# How far back the pace is measured: long enough to average batches, short enough that a
# past overload does not make an idle pipeline look slow.
PACE_NS = 10_000_000_000


class ServiceModel:
    """Per-request service time, learned from every result's batch timing, by frame size.

    A batch holds frames of one shape, so `infer_us / batch_size` is a clean sample of what
    one request of that size costs. Sizes are kept apart by their power of two in pixels (a
    small frame's cost is mostly fixed overhead, a large one's mostly per pixel: one rate per
    pixel would price either wrongly), each with a moving average. A size never measured is
    priced between its measured neighbours, or like the largest measured size below it: an
    optimistic price, so that a new size is admitted, served and measured, never refused on a
    guess. Two lower bounds come from the recent minima: no request is served faster than the
    fastest recent batch (`floor_ns`, what makes a budget impossible) nor costs less than the
    cheapest recent request.
    """

    def __init__(self, *, window: int = 64, weight: float = 0.2) -> None:
        self._weight = weight
        self._batches: deque[int] = deque(maxlen=window)
        self._requests: deque[int] = deque(maxlen=window)
        # Per size class (pixels.bit_length()): moving averages of pixels and of request ns.
        self._sizes: dict[int, tuple[float, float]] = {}
        self.floor_ns = 0
        self.min_request_ns = 0
        self.samples = 0
        # How fast estimated work gets done while work is waiting: (work, wall ns, when).
        self._busy: deque[tuple[int, int, int]] = deque(maxlen=window)
        self._done_ns = 0
        self._pending = False

    @property
    def measured(self) -> bool:
        """Whether any batch was measured yet (before, nothing is priced)."""
        return self.samples > 0

    def observe(self, infer_us: int, batch_size: int, pixels: int) -> None:
        """One result came back from a batch of `batch_size` frames of `pixels` each."""
        batch_ns = max(1, infer_us * 1000)
        request_ns = max(1, batch_ns // max(1, batch_size))
        pixels = max(1, pixels)
        size = pixels.bit_length()
        known = self._sizes.get(size)
        if known is None:
            self._sizes[size] = (float(pixels), float(request_ns))
        else:
            w = self._weight
            self._sizes[size] = (
                known[0] + w * (pixels - known[0]),
                known[1] + w * (request_ns - known[1]),
            )
        self._batches.append(batch_ns)
        self._requests.append(request_ns)
        self.floor_ns = min(self._batches)
        self.min_request_ns = min(self._requests)
        self.samples += 1

    def completed(self, cost_ns: int, now_ns: int, *, pending: bool) -> None:
        """A request of estimated work `cost_ns` ended; `pending`: more work waits now.

        The time since the previous completion counts when work was waiting all along: the
        pipeline's real pace, with every overhead the batch timings do not see.
        """
        if self._pending and self._done_ns:
            self._busy.append((cost_ns, max(1, now_ns - self._done_ns), now_ns))
        self._done_ns, self._pending = now_ns, pending

    def speed(self, workers: int, now_ns: int) -> float:
        """Estimated work done per wall-clock ns while busy, over the last `PACE_NS`: at most
        `workers` (each worker as fast as its batch timings say), less when overheads slow
        them down. Without recent busy spells, the batch timings are taken at their word."""
        recent = [(w, t) for w, t, at in self._busy if now_ns - at < PACE_NS]
        if len(recent) < 8:
            return float(workers)
        work = sum(w for w, _ in recent)
        elapsed = sum(t for _, t in recent)
        return max(1e-3, min(float(workers), work / elapsed))

    def knows(self, pixels: int) -> bool:
        """Whether frames of this size (its power of two) were measured."""
        return max(1, pixels).bit_length() in self._sizes

    def cost_ns(self, pixels: int) -> int:
        """The estimated work of one request of `pixels` (1 before any measurement)."""
        if not self.samples:
            return 1
        pixels = max(1, pixels)
        size = pixels.bit_length()
        known = self._sizes.get(size)
        if known is not None:
            estimate = known[1] * pixels / known[0]
        else:
            below = max((s for s in self._sizes if s < size), default=None)
            above = min((s for s in self._sizes if s > size), default=None)
            if below is not None and above is not None:
                (p0, c0), (p1, c1) = self._sizes[below], self._sizes[above]
                estimate = c0 + (c1 - c0) * (pixels - p0) / (p1 - p0)
            elif below is not None:
                estimate = self._sizes[below][1]
            else:
                assert above is not None
                p1, c1 = self._sizes[above]
                estimate = c1 * pixels / p1
        return max(self.min_request_ns, int(estimate))
