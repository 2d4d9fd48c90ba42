"""The bus: envelopes, codec, pub/sub, proxy, channels, run directory, clocks and signals."""

from vigil.bus.channel import Channel, FrameFault, Incoming
from vigil.bus.closing import Closing
from vigil.bus.deadline import Deadline
from vigil.bus.envelope import Envelope, TraceContext
from vigil.bus.proxy import Proxy
from vigil.bus.pubsub import Publisher, Received, Subscriber, TopicStats
from vigil.bus.rundir import RunDir, RunGraph, find_run_dir, resolve_endpoint
from vigil.bus.signals import SignalWakeup

__all__ = [
    "Channel",
    "Closing",
    "Deadline",
    "Envelope",
    "FrameFault",
    "Incoming",
    "Proxy",
    "Publisher",
    "Received",
    "RunDir",
    "RunGraph",
    "SignalWakeup",
    "Subscriber",
    "TopicStats",
    "TraceContext",
    "find_run_dir",
    "resolve_endpoint",
]
