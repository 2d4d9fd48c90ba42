"""Recording, inspecting and replaying bus traffic as MCAP bags, and comparing replays."""

from vigil.tools.bag._mcap import (
    BagError,
    BagFormatError,
    BagMessage,
    BagReader,
    BagWriter,
    read_messages,
)
from vigil.tools.bag.compare import (
    DEFAULT_TOLERANCES,
    BoxTolerance,
    CheckReport,
    Difference,
    FieldTolerance,
    Observed,
    Tolerances,
    TopicReport,
    TopicTolerance,
    compare,
    format_report,
    load_tolerances,
    read_bag_io,
)
from vigil.tools.bag.info import BagInfo, TopicInfo, bag_info, format_info
from vigil.tools.bag.play import NoSubscribers, PlayConfig, Player, PlayReport, parse_remap
from vigil.tools.bag.record import RecordConfig, Recorder, RecordStats, TopicFilter

__all__ = [
    "DEFAULT_TOLERANCES",
    "BagError",
    "BagFormatError",
    "BagInfo",
    "BagMessage",
    "BagReader",
    "BagWriter",
    "BoxTolerance",
    "CheckReport",
    "Difference",
    "FieldTolerance",
    "NoSubscribers",
    "Observed",
    "PlayConfig",
    "PlayReport",
    "Player",
    "RecordConfig",
    "RecordStats",
    "Recorder",
    "Tolerances",
    "TopicFilter",
    "TopicInfo",
    "TopicReport",
    "TopicTolerance",
    "bag_info",
    "compare",
    "format_info",
    "format_report",
    "load_tolerances",
    "parse_remap",
    "read_bag_io",
    "read_messages",
]
