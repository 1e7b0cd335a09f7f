"""One place for how wirestream talks to Kafka: the topics a worker needs.

``wirestream.broker`` runs the embedded broker and holds the low-level admin calls
(``broker.ensure_topics`` creates a list of topics); this module decides which topics a
stage needs and with how many partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from wirestream import broker
from wirestream.errors import WirestreamError

Role = Literal["all", "packets", "windows"]


@dataclass(frozen=True)
class ProcessTopics:
    """The partition counts a ``process`` worker is built with (read back from the broker)."""

    packet_partitions: int
    observation_partitions: int


def ensure_topics(bootstrap: str, partitions: int, *, group: str, role: Role = "all",
                  plugins: Sequence[str] = ()) -> ProcessTopics:
    """Create the topics a ``wirestream process`` worker needs and return their partition counts.

    Missing topics are created with ``partitions`` partitions; an operator's existing ones
    are left as they are, so the counts returned are the broker's, not ``partitions``.
    ``plugins`` are plugin names whose declared outputs are created too; ``group`` names
    the windows' changelog topic (created unless ``role`` is ``"packets"``).

    Raises ``WirestreamError`` when wire.sockets and wire.packets have different partition
    counts (socket events are joined to packets partition by partition).
    """
    # Imported here: processors.app imports this module (for the producer config).
    from wirestream.processors.app import changelog_topic
    from wirestream.topics import ALL_TOPICS, OBSERVATIONS, PACKETS, SOCKETS

    broker.ensure_topics(bootstrap, ALL_TOPICS, partitions)
    if plugins:
        from wirestream.plugins import load

        for name in plugins:  # a plugin's own topics: ours to create too
            broker.ensure_topics(bootstrap, list(load(name).outputs), partitions)
    packet_partitions = broker.partition_count(bootstrap, PACKETS)
    if role != "windows":
        # The packet agent joins wire.sockets to wire.packets partition by partition: Faust
        # gives one worker the same partition of both only if their counts are equal.
        broker.ensure_topics(bootstrap, [SOCKETS], packet_partitions)
        socket_partitions = broker.partition_count(bootstrap, SOCKETS)
        if socket_partitions != packet_partitions:
            raise WirestreamError(
                f"{SOCKETS} has {socket_partitions} partitions and {PACKETS} {packet_partitions}: "
                "they must be equal (socket events are joined to packets partition by partition)")
    observation_partitions = broker.partition_count(bootstrap, OBSERVATIONS)
    if role != "packets":
        # Faust does not create topics here (topic_allow_declare=False): the windows'
        # changelog is ours to create, with one partition per observation partition.
        broker.ensure_topics(bootstrap, [changelog_topic(group)], observation_partitions)
    return ProcessTopics(packet_partitions=packet_partitions, observation_partitions=observation_partitions)
