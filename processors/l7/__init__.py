"""Application-layer (L7) analysers: one module per protocol.

Each TCP analyser is a :class:`~wirestream.processors.l7.base.StreamAnalyzer` fed the
in-order bytes of both directions of one connection by the compiled core's stream
reassembly (``rust/src/reassembly.rs``, run by the TCP tracker, whose data and gap
events :mod:`.session` hands on); the protocol is chosen from the first bytes
(:mod:`.detect`), never from the port number. DNS over UDP is matched per partition by
:class:`~wirestream.processors.l7.dns.DnsMatcher`.
"""
