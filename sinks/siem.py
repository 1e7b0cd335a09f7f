"""SIEM sinks: alerts (or any output topic) as Elastic Common Schema JSON or CEF, over
syslog (TCP or UDP) or to a Splunk HEC-style HTTP collector.

Formats (one record -> one event):

- :func:`ecs_event`: an `Elastic Common Schema <https://www.elastic.co/guide/en/ecs/>`_
  document: ``@timestamp``, ``event.*`` (kind ``alert`` for detections, ``event``
  otherwise; category ``network``), ``source``/``destination`` address and port,
  ``network.transport``, ``http.*``/``url.*`` for transactions, ``dns.*``, ``tls.*``,
  ``rule.name``/``message`` for alerts, for queries (wire.queries) category ``database``
  with ``event.action``/``event.outcome``/``event.duration``, ``error.message`` and
  ``network.protocol`` (ECS has no ``db.*``: the statement is in ``wirestream.statement``),
  ``service.name``; for Kafka calls (wire.messaging) the API as ``event.action``, the
  outcome, the duration, the client id as ``user_agent.name`` and the Kafka error in
  ``error.*``; and the whole record under ``wirestream``;
- :func:`cef_event`: ArcSight Common Event Format,
  ``CEF:0|wirestream|wirestream|VERSION|signature|name|severity|extensions``, with CEF's
  escaping (``\\|`` and ``\\\\`` in the header, ``\\=``, ``\\\\`` and ``\\n`` in extension values).

Transports:

- ``syslog+tls://host:port`` (port 6514 by default): RFC 5425, syslog over TLS with
  octet-counted framing (``MSG-LEN SP SYSLOG-MSG``, as rsyslog's ``imtcp`` with the gtls
  driver and syslog-ng's ``network(transport(tls))`` read it). The collector's
  certificate is verified against ``ca`` (else the system's CAs) and its name against
  the URL's host; ``cert``/``key`` present a client certificate (mutual TLS);
- ``syslog+tcp://host:port``: RFC 5424 messages, one per line (LF framing, as rsyslog's
  ``imtcp`` and syslog-ng read them); the connection is reopened after an error;
- ``syslog+udp://host:port``: one datagram per message;
- ``http(s)://host:port/path``: Splunk HEC's JSON (``{"time", "sourcetype", "event"}``
  objects, several per POST), ``Authorization: Splunk TOKEN``. HTTPS verifies the
  collector's certificate (``ca``, else the system's CAs) and name unless ``insecure``
  (which logs a warning once); ``cert``/``key`` also work here.

Delivery is at least once (``sinks/base.py``): a batch is committed after every event of
it was sent (for TCP and TLS: written to the socket; for HEC: a 2xx answer); a failure is
retried with backoff, and nothing more is consumed meanwhile. A collector whose
certificate is not trusted (or that refuses ours) is not a failure that waiting mends:
the sink stops with :class:`DestinationRefused` (one line: which destination, what the
TLS library said), the batch uncommitted, so the records come again once it is fixed.
Secrets (the HEC token, a password in the URL) appear in no log line or error.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from wirestream.errors import WirestreamError
from wirestream.topics import (
    ALERTS,
    DNS,
    FLOWS,
    MESSAGING,
    QUERIES,
    TLS,
    TRANSACTIONS,
    record_time_us,
)

from .base import BatchSink, Item
from .jsonl import to_json_line

log = logging.getLogger(__name__)

VERSION = "0.1.0"
SCHEMES = ("syslog+tls", "syslog+tcp", "syslog+udp", "http", "https")
DEFAULT_PORTS = {"syslog+tls": 6514, "syslog+tcp": 514, "syslog+udp": 514}
#: after connecting over TLS, how long to wait for the collector to reject our certificate
#: (with TLS 1.3 it does so after the client's handshake is over, at its first read)
TLS_REJECT_WAIT_S = 0.5
#: where the HEC token comes from when no --token-file is given
HEC_TOKEN_ENV = "WIRESTREAM_HEC_TOKEN"
MAX_DATAGRAM = 65_000  # payload of one UDP datagram, with room for the syslog header
#: CEF severity (0-10) of an alert severity
CEF_SEVERITY = {"info": 3, "low": 3, "warning": 5, "medium": 5, "high": 8, "critical": 10}
#: ECS event.outcome (and CEF outcome) of a query's status: no reply is not known to have failed
QUERY_OUTCOME = {"ok": "success", "error": "failure", "no_reply": "unknown"}


def _iso(ts_us: int | None) -> str:
    moment = datetime.datetime.fromtimestamp((ts_us or 0) / 1e6, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    return json.loads(to_json_line(value))  # bytes as text, as in the JSONL files


def ecs_event(topic: str, record: dict[str, Any]) -> dict[str, Any]:
    """An ECS document for one record of ``topic``."""
    ts = record_time_us(topic, record)
    alert = topic == ALERTS
    doc: dict[str, Any] = {
        "@timestamp": _iso(ts),
        "ecs": {"version": "8.11.0"},
        "event": {"kind": "alert" if alert else "event", "category": ["network"], "module": "wirestream",
                  "dataset": topic, "type": ["info"] if not alert else ["indicator"]},
        "observer": {"product": "wirestream", "vendor": "wirestream", "type": "sensor"},
    }
    if "client_ip" in record:
        doc["source"] = {"ip": record["client_ip"], "port": record.get("client_port")}
        doc["destination"] = {"ip": record["server_ip"], "port": record.get("server_port")}
        transport = str(record.get("transport") or "tcp").lower()
        if transport == "icmp" and record.get("ip_version") == 6:
            transport = "ipv6-icmp"  # ECS takes IANA's keyword; our records say "icmp" as Zeek does
        doc["network"] = {"transport": transport}
    community_id = record.get("community_id")
    if community_id:  # ECS network.community_id: what SIEMs join Zeek's and Suricata's records on
        doc.setdefault("network", {})["community_id"] = community_id
    verdict = record.get("policy_verdict")
    if verdict in ("allowed", "denied"):
        # ECS event.type has "allowed"/"denied" for exactly this: a policy's decision; the
        # deciding Kubernetes NetworkPolicies as the rule
        doc["event"]["type"] = [verdict]
        doc["rule"] = {"name": ",".join(record.get("policy_names") or []), "ruleset": "kubernetes-networkpolicy"}
    if topic == TRANSACTIONS:
        doc["http"] = {"request": {"method": record.get("method")},
                       "response": {"status_code": record.get("status")}}
        doc["url"] = {"path": record.get("path"), "domain": record.get("host")}
        if record.get("tls"):  # read from TLS decrypted with a key log
            doc["tls"] = {"established": True}
            doc["url"]["scheme"] = "https"
    elif topic == DNS:
        doc["dns"] = {"question": {"name": record.get("query_name"), "type": record.get("query_type")},
                      "response_code": record.get("rcode")}
    elif topic == TLS:
        doc["tls"] = {"client": {"server_name": record.get("server_name")},
                      "cipher": record.get("cipher_suite"), "version": record.get("version")}
    elif topic == FLOWS:
        # ECS: the flow's counters per side, and the application protocol its bytes showed
        doc["source"].update(packets=record["packets_c2s"], bytes=record["frame_bytes_c2s"])
        doc["destination"].update(packets=record["packets_s2c"], bytes=record["frame_bytes_s2c"])
        doc["network"].update(packets=record["packets_c2s"] + record["packets_s2c"],
                              bytes=record["frame_bytes_c2s"] + record["frame_bytes_s2c"])
        if record.get("service"):
            doc["network"]["protocol"] = record["service"]
        doc["event"]["duration"] = (record["end_ts_us"] - record["start_ts_us"]) * 1000  # ns
    elif topic == QUERIES:
        # ECS 8.11 has no db.* field set: the call is a "database" event whose action is the
        # command; its statement (redacted) and target stay in wirestream.*
        doc["event"]["category"] = ["database", "network"]
        _call(doc, record, record.get("operation"))
        if record.get("error"):
            doc["error"] = {"message": record["error"]}
            if record.get("error_code"):  # SQLSTATE, Redis's error prefix
                doc["error"]["code"] = record["error_code"]
        if record.get("db_user"):  # the database user the connection logged in as
            doc["user"] = {"name": record["db_user"]}
        doc.setdefault("network", {})["protocol"] = record.get("protocol")
    elif topic == MESSAGING:
        # a Kafka call: ECS has no messaging fields either; the API is the action, the
        # client id ECS's user_agent (what the client calls itself), the Kafka error's name
        # and code in error.*; topics, group and records stay in wirestream.*
        _call(doc, record, record.get("api"))
        if record.get("error"):
            doc["error"] = {"message": record["error"], "code": str(record.get("error_code"))}
        if record.get("client_id"):
            doc["user_agent"] = {"name": record["client_id"]}
        doc.setdefault("network", {})["protocol"] = "kafka"
    elif alert:
        doc["rule"] = {"name": record.get("kind")}
        doc["event"]["severity"] = CEF_SEVERITY.get(str(record.get("severity")), 5)
        doc["message"] = record.get("summary") or record.get("kind")
    drops = record.get("drops")
    if drops:
        # No ECS field for packets the kernel dropped: custom fields under network.*,
        # the reasons as ECS event.reason (a keyword) and a tag a SIEM rule can match.
        doc.setdefault("network", {})["drops"] = dict(drops)
        doc["network"]["dropped_packets"] = sum(drops.values())
        doc["event"]["reason"] = ",".join(sorted(drops))
        doc["tags"] = ["packet_drops"]
    if record.get("client_pid") is not None:
        # ECS process.*: the process of the event, here the one that connect()ed (live
        # eBPF capture); the server's process stays in wirestream.server_pid/_process
        doc["process"] = {"pid": record["client_pid"], "name": record.get("client_process")}
    calls = _syscall_calls(record)
    if calls:  # the data syscalls on the two sockets (custom: ECS has no field for them)
        doc.setdefault("network", {})["syscalls"] = calls
    service = record.get("server_service") or (record.get("service") if topic != FLOWS else None)
    if service:
        doc["service"] = {"name": service}
    doc["wirestream"] = _plain(record)
    return doc


def _call(doc: dict[str, Any], record: dict[str, Any], action: str | None) -> None:
    """A call with a reply (wire.queries, wire.messaging): its action, outcome, duration."""
    doc["event"]["action"] = action
    doc["event"]["outcome"] = QUERY_OUTCOME.get(str(record.get("status")), "unknown")
    if record.get("status") == "error":
        doc["event"]["type"] = ["info", "error"]
    if record.get("latency_us") is not None:
        doc["event"]["duration"] = record["latency_us"] * 1000  # ns


def _syscall_calls(record: dict[str, Any]) -> dict[str, int]:
    """Data syscalls made on a connection's sockets (live eBPF capture): calls per side."""
    out = {}
    for side in ("client", "server"):
        counts = record.get(f"{side}_syscalls")
        if counts:
            out[side] = counts["send_calls"] + counts["recv_calls"]
    return out


def _cef_header(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|")


def _cef_value(text: Any) -> str:
    return (str(text).replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n"))


def cef_event(topic: str, record: dict[str, Any]) -> str:
    """One CEF line for one record of ``topic``."""
    alert = topic == ALERTS
    signature = record.get("kind") if alert else topic
    name = (record.get("summary") or record.get("kind") or topic) if alert else topic.split(".", 1)[-1]
    severity = CEF_SEVERITY.get(str(record.get("severity")), 5) if alert else 1
    ext: dict[str, Any] = {"rt": (record_time_us(topic, record) or 0) // 1000}
    if "client_ip" in record:
        ext.update(src=record["client_ip"], spt=record.get("client_port"), dst=record["server_ip"],
                   dpt=record.get("server_port"), proto=str(record.get("transport") or "tcp").upper())
    if topic == TRANSACTIONS:
        ext.update(requestMethod=record.get("method"), request=record.get("path"),
                   cs1Label="status", cs1=record.get("status"))
    elif topic == QUERIES:
        # cs1 is the statement here (a transaction's is its status); out/in: the bytes of the
        # command and of the reply, as for flows (client to server, server to client)
        ext.update(app=record.get("protocol"), act=record.get("operation"),
                   outcome=QUERY_OUTCOME.get(str(record.get("status")), "unknown"),
                   cs1Label="statement", cs1=record.get("statement"), reason=record.get("error"),
                   out=record.get("request_bytes"), **{"in": record.get("response_bytes")})
        if record.get("db_user"):
            ext["suser"] = record["db_user"]
    elif topic == MESSAGING:
        # cs1: the topics; out/in: the request's and the response's bytes
        ext.update(app="kafka", act=record.get("api"), outcome=QUERY_OUTCOME.get(str(record.get("status")), "unknown"),
                   cs1Label="topics", cs1=",".join(record.get("topics") or []), reason=record.get("error"),
                   requestClientApplication=record.get("client_id"),
                   out=record.get("request_bytes"), **{"in": record.get("response_bytes")})
    service = record.get("server_service") or (record.get("service") if topic != FLOWS else None)
    if service:
        ext.update(cs2Label="service", cs2=service)
    if topic == FLOWS:
        ext.update(app=record.get("service"), out=record["frame_bytes_c2s"], **{"in": record["frame_bytes_s2c"]})
    if record.get("policy_verdict") in ("allowed", "denied"):
        # cs3: the NetworkPolicy verdict (the traffic was seen: it is not the device's action)
        ext.update(cs3Label="policyVerdict", cs3=record["policy_verdict"],
                   cs4Label="policies", cs4=",".join(record.get("policy_names") or []))
    if record.get("cross_zone") is not None:
        ext.update(cs5Label="crossZone", cs5=str(record["cross_zone"]).lower())
    drops = record.get("drops")
    if drops:  # packets the kernel dropped, and by which reasons
        ext.update(cn1Label="droppedPackets", cn1=sum(drops.values()), cs6Label="dropReasons",
                   cs6=",".join(f"{k}:{v}" for k, v in sorted(drops.items())))
    # CEF's own keys for the processes at either end (live eBPF capture)
    ext.update(spid=record.get("client_pid"), sproc=record.get("client_process"),
               dpid=record.get("server_pid"), dproc=record.get("server_process"))
    calls = _syscall_calls(record)
    if "client" in calls:
        ext.update(cn2Label="clientSyscalls", cn2=calls["client"])
    if "server" in calls:
        ext.update(cn3Label="serverSyscalls", cn3=calls["server"])
    if alert:
        ext["msg"] = record.get("summary") or record.get("kind")
        ext["externalId"] = record.get("alert_id")
    extensions = " ".join(f"{k}={_cef_value(v)}" for k, v in ext.items() if v is not None)
    return (f"CEF:0|wirestream|wirestream|{VERSION}|{_cef_header(signature)}|{_cef_header(name)}|"
            f"{severity}|{extensions}")


def syslog_line(message: str, hostname: str, app: str = "wirestream", severity: int = 5) -> str:
    """An RFC 5424 message (facility local0)."""
    pri = 16 * 8 + severity
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"<{pri}>1 {now} {hostname} {app} - - - {message}"


class DestinationRefused(WirestreamError):
    """The destination refused the connection for a reason that waiting does not mend: its
    certificate is not trusted, its name is not the URL's host, it refused our certificate."""


def tls_client_context(ca: str | None = None, cert: str | None = None, key: str | None = None,
                       insecure: bool = False) -> ssl.SSLContext:
    """A client context: verifies the peer against ``ca`` (a PEM file; else the system's
    CAs) with hostname checking, unless ``insecure``; presents ``cert``/``key`` if given.
    Raises ``ValueError`` naming the file that cannot be used."""
    if key is not None and cert is None:
        raise ValueError("--key needs --cert (the client certificate it belongs to)")
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use CA file {ca}: {_ssl_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 5425 (updated by RFC 9662) wants 1.2 or newer
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use client certificate {cert}"
                             f"{f' with key {key}' if key else ''}: {_ssl_reason(exc)}") from None
    return ctx


def _ssl_reason(exc: BaseException) -> str:
    """What went wrong, in words (a verification error says why the certificate is not trusted)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or str(exc)
        return f"the collector's certificate is not trusted: {why} (give its CA with --ca PEM)"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _refusal(exc: BaseException) -> bool:
    """Whether a TLS error is about certificates (ours or theirs): configuration, not an
    outage, so retrying would only wait forever."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    reason = str(exc.reason or "").upper() if isinstance(exc, ssl.SSLError) else ""
    # the peer's alerts: BAD_CERTIFICATE, CERTIFICATE_REQUIRED, CERTIFICATE_UNKNOWN, UNKNOWN_CA, ...
    return "CERTIFICATE" in reason or "UNKNOWN_CA" in reason


def redacted_url(url: str) -> str:
    """``url`` without its user information (``***@host``: a user name may be a token too), for messages."""
    parsed = urlparse(url)
    if "@" not in parsed.netloc:
        return url
    return parsed._replace(netloc="***@" + parsed.netloc.rsplit("@", 1)[1]).geturl()


def read_token(token_file: str | None, env: str = HEC_TOKEN_ENV) -> str:
    """A token from ``token_file`` (its first line, whitespace stripped) or else ``$env``;
    "" if neither. Raises ``ValueError`` naming the file (never its contents)."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as exc:
            raise ValueError(f"cannot read token file {token_file}: {exc.strerror or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise ValueError(f"token file {token_file} is not UTF-8 text") from None
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return os.environ.get(env, "").strip()


class SiemSink(BatchSink):
    """Send records of ``topics`` to ``url`` in ``fmt`` (``ecs`` or ``cef``)."""

    name = "siem sink"

    def __init__(self, bootstrap: str, registry: str, url: str, fmt: str = "ecs",
                 topics: list[str] | None = None, group: str = "wirestream-sink-siem", token: str = "",
                 flush_records: int = 500, flush_seconds: float = 1.0, from_beginning: bool = True,
                 ca: str | None = None, cert: str | None = None, key: str | None = None,
                 insecure: bool = False) -> None:
        """``ca``/``cert``/``key``: PEM files for ``syslog+tls://`` and ``https://`` (the CA
        to verify the collector with, else the system's; a client certificate and its key);
        ``insecure``: HTTPS without verifying the collector (a warning is logged)."""
        # Checked before the consumer is made: a bad option is an error at once, not a
        # consumer group joined for nothing.
        if fmt not in ("ecs", "cef"):
            raise ValueError(f"format must be ecs or cef, not {fmt!r}")
        self.display_url = redacted_url(url)
        self.url = urlparse(url)
        if self.url.scheme not in SCHEMES or not self.url.hostname:
            raise ValueError(f"unsupported destination {self.display_url!r}: "
                             "syslog+tls://HOST:PORT, syslog+tcp://, syslog+udp:// or http(s)://")
        if self.url.username is not None or self.url.password is not None:
            raise ValueError(f"{self.display_url}: a user or password in the URL is not used (and shows in ps): "
                             "an HEC token goes in --token-file FILE or $" + HEC_TOKEN_ENV)
        tls = self.url.scheme in ("syslog+tls", "https")
        if not tls and (ca or cert or key or insecure):
            raise ValueError(f"--ca, --cert, --key and --insecure are for syslog+tls:// and https://, "
                             f"not {self.url.scheme}://")
        if insecure and self.url.scheme != "https":
            raise ValueError("--insecure is for https:// only: syslog+tls:// always verifies the collector")
        self._ssl = tls_client_context(ca, cert, key, insecure) if tls else None
        if insecure:
            log.warning("%s: NOT verifying the certificate of %s (--insecure): anyone on the path can "
                        "read and change the events and the token", self.name, self.display_url)
        if token and self.url.scheme == "http":
            log.warning("%s: the HEC token goes in cleartext to %s: use https://", self.name, self.display_url)
        super().__init__(bootstrap, registry, topics or [ALERTS], group, flush_records, flush_seconds,
                         from_beginning)
        self.fmt = fmt
        self.token = token
        self.hostname = socket.gethostname()
        self._tcp: socket.socket | None = None
        self._port = self.url.port or DEFAULT_PORTS.get(self.url.scheme)

    def _format(self, item: Item) -> str:
        if self.fmt == "cef":
            return cef_event(item.topic, item.record)
        return json.dumps(ecs_event(item.topic, item.record), separators=(",", ":"), ensure_ascii=False)

    def write(self, batch: list[Item]) -> None:
        events = []
        for item in batch:
            text = self._format(item)
            if self.url.scheme == "syslog+udp" and len(text.encode()) > MAX_DATAGRAM:
                # Never deliverable as one datagram: a dead letter, not a retry forever.
                self.dead_letter(item.topic, item.partition, item.offset, item.key, item.raw,
                                 f"event of {len(text.encode())} bytes is too large for a UDP datagram")
                continue
            events.append((item.topic, text, item.record))
        if self.url.scheme.startswith("syslog"):
            lines = [syslog_line(text, self.hostname) for _, text, _ in events]
            if self.url.scheme == "syslog+udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    for line in lines:
                        s.sendto(line.encode(), (self.url.hostname, self._port))
            elif self.url.scheme == "syslog+tls":
                # RFC 5425 4.3: octet counting, MSG-LEN SP SYSLOG-MSG (a message may hold LFs)
                self._send_tcp(b"".join(b"%d %s" % (len(m), m) for m in (line.encode() for line in lines)))
            else:
                self._send_tcp("".join(line + "\n" for line in lines).encode())
        else:
            self._post_hec(events)
        for topic, _, _ in events:
            self.written[topic] += 1

    def _send_tcp(self, data: bytes) -> None:
        try:
            if self._tcp is not None and self._peer_closed(self._tcp):
                # the collector went away since the last batch (restarted, idle timeout):
                # writing into the dead socket would "succeed" and lose the batch
                self._tcp.close()
                self._tcp = None
            if self._tcp is None:
                self._tcp = self._connect()
            self._tcp.sendall(data)
        except OSError as exc:
            if self._tcp is not None:
                self._tcp.close()
                self._tcp = None
            if _refusal(exc):
                raise DestinationRefused(f"{self.display_url}: TLS refused: {_ssl_reason(exc)}") from None
            raise OSError(f"{self.display_url}: {_ssl_reason(exc)}") from None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.url.hostname, self._port), timeout=10)
        if self._ssl is None:
            return sock
        try:
            tls = self._ssl.wrap_socket(sock, server_hostname=self.url.hostname)
        except BaseException:
            sock.close()
            raise
        # TLS 1.3: a collector that refuses our certificate (or wants one) says so after the
        # handshake; wait a moment for that, so that a refusal is not taken for a delivery.
        tls.settimeout(TLS_REJECT_WAIT_S)
        try:
            if tls.recv(1) == b"":
                tls.close()
                raise ConnectionResetError("the collector closed the connection right after the TLS handshake "
                                           "(does it require a client certificate? --cert/--key)")
        except TimeoutError:
            pass  # nothing said: accepted (a syslog collector never writes to us)
        except BaseException:
            tls.close()
            raise
        tls.settimeout(10)
        return tls

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        sock.setblocking(False)
        try:
            return sock.recv(1) == b""  # EOF; data from a syslog collector is not expected either
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(10)

    def _post_hec(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        body = "".join(json.dumps({
            "time": (record_time_us(topic, record) or 0) / 1e6,
            "host": self.hostname, "source": "wirestream", "sourcetype": f"wirestream:{topic}",
            "event": json.loads(text) if self.fmt == "ecs" else text,
        }, separators=(",", ":")) for topic, text, record in events).encode()
        req = urllib.request.Request(self.url.geturl(), data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Splunk {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=self._ssl) as resp:
                if not 200 <= resp.status < 300:
                    raise OSError(f"HEC {self.display_url} answered {resp.status}")
        except urllib.error.HTTPError as exc:
            raise OSError(f"HEC {self.display_url} answered {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, BaseException) and _refusal(exc.reason):
                raise DestinationRefused(f"HEC {self.display_url}: TLS refused: {_ssl_reason(exc.reason)}") from None
            reason = _ssl_reason(exc.reason) if isinstance(exc.reason, BaseException) else exc.reason
            raise OSError(f"HEC {self.display_url} unreachable: {reason}") from None
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:  # raised past urllib's wrapping
            if _refusal(exc):
                raise DestinationRefused(f"HEC {self.display_url}: TLS refused: {_ssl_reason(exc)}") from None
            raise OSError(f"HEC {self.display_url}: {_ssl_reason(exc)}") from None

    def close_destination(self) -> None:
        if self._tcp is not None:
            if isinstance(self._tcp, ssl.SSLSocket):
                try:  # a TLS close_notify, so that the collector sees an orderly end
                    self._tcp.settimeout(1)
                    self._tcp.unwrap()
                except OSError:
                    pass
            self._tcp.close()
            self._tcp = None
