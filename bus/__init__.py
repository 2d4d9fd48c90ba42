"""The bus: envelopes and codec, typed pub/sub, the proxy, channels, run directory, clocks."""

from vigil.bus.channel import Channel, FrameFault, Incoming
from vigil.bus.closing import Closing
from vigil.bus.envelope import Envelope, TraceContext
from vigil.bus.proxy import Proxy
from vigil.bus.pubsub import Publisher, Received, Subscriber, TopicStats
from vigil.bus.rundir import RunDir, RunGraph, find_run_dir

__all__ = [
    "Channel",
    "Closing",
    "Envelope",
    "FrameFault",
    "Incoming",
    "Proxy",
    "Publisher",
    "Received",
    "RunDir",
    "RunGraph",
    "Subscriber",
    "TopicStats",
    "TraceContext",
    "find_run_dir",
]
