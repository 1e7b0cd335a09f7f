"""SIEM sinks: alerts (or any output topic) as Elastic Common Schema JSON or CEF, over
syslog (TCP or UDP) or to a Splunk HEC-style HTTP collector.

Formats (one record -> one event):

- :func:`ecs_event`: an `Elastic Common Schema <https://www.elastic.co/guide/en/ecs/>`_
  document: ``@timestamp``, ``event.*`` (kind ``alert`` for detections, ``event``
  otherwise; category ``network``), ``source``/``destination`` address and port,
  ``network.transport``, ``http.*``/``url.*`` for transactions, ``dns.*``, ``tls.*``,
  ``rule.name``/``message`` for alerts, ``service.name``, and the whole record under
  ``wirestream``;
- :func:`cef_event`: ArcSight Common Event Format,
  ``CEF:0|wirestream|wirestream|VERSION|signature|name|severity|extensions``, with CEF's
  escaping (``\\|`` and ``\\\\`` in the header, ``\\=``, ``\\\\`` and ``\\n`` in extension values).

Transports:

- ``syslog+tcp://host:port``: RFC 5424 messages, one per line (LF framing, as rsyslog's
  ``imtcp`` and syslog-ng read them); the connection is reopened after an error;
- ``syslog+udp://host:port``: one datagram per message;
- ``http(s)://host:port/path``: Splunk HEC's JSON (``{"time", "sourcetype", "event"}``
  objects, several per POST), ``Authorization: Splunk TOKEN``.

Delivery is at least once (``sinks/base.py``): a batch is committed after every event of
it was sent (for TCP: written to the socket; for HEC: a 2xx answer); a failure is retried
with backoff, and nothing more is consumed meanwhile.
"""

from __future__ import annotations

import datetime
import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from wirestream.topics import ALERTS, DNS, TLS, TRANSACTIONS, record_time_us

from .base import BatchSink, Item
from .jsonl import to_json_line

VERSION = "0.1.0"
MAX_DATAGRAM = 65_000  # payload of one UDP datagram, with room for the syslog header
#: CEF severity (0-10) of an alert severity
CEF_SEVERITY = {"info": 3, "low": 3, "warning": 5, "medium": 5, "high": 8, "critical": 10}


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
        doc["network"] = {"transport": str(record.get("transport") or "tcp").lower()}
    if topic == TRANSACTIONS:
        doc["http"] = {"request": {"method": record.get("method")},
                       "response": {"status_code": record.get("status")}}
        doc["url"] = {"path": record.get("path"), "domain": record.get("host")}
    elif topic == DNS:
        doc["dns"] = {"question": {"name": record.get("query_name"), "type": record.get("query_type")},
                      "response_code": record.get("rcode")}
    elif topic == TLS:
        doc["tls"] = {"client": {"server_name": record.get("server_name")},
                      "cipher": record.get("cipher_suite"), "version": record.get("version")}
    elif alert:
        doc["rule"] = {"name": record.get("kind")}
        doc["event"]["severity"] = CEF_SEVERITY.get(str(record.get("severity")), 5)
        doc["message"] = record.get("summary") or record.get("kind")
    service = record.get("server_service") or record.get("service")
    if service:
        doc["service"] = {"name": service}
    doc["wirestream"] = _plain(record)
    return doc


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
                   dpt=record.get("server_port"), proto="TCP")
    if topic == TRANSACTIONS:
        ext.update(requestMethod=record.get("method"), request=record.get("path"),
                   cs1Label="status", cs1=record.get("status"))
    service = record.get("server_service") or record.get("service")
    if service:
        ext.update(cs2Label="service", cs2=service)
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


class SiemSink(BatchSink):
    """Send records of ``topics`` to ``url`` in ``fmt`` (``ecs`` or ``cef``)."""

    name = "siem sink"

    def __init__(self, bootstrap: str, registry: str, url: str, fmt: str = "ecs",
                 topics: list[str] | None = None, group: str = "wirestream-sink-siem", token: str = "",
                 flush_records: int = 500, flush_seconds: float = 1.0, from_beginning: bool = True) -> None:
        super().__init__(bootstrap, registry, topics or [ALERTS], group, flush_records, flush_seconds,
                         from_beginning)
        if fmt not in ("ecs", "cef"):
            raise ValueError(f"format must be ecs or cef, not {fmt!r}")
        self.url = urlparse(url)
        if self.url.scheme not in ("syslog+tcp", "syslog+udp", "http", "https"):
            raise ValueError(f"unsupported destination {url!r}: syslog+tcp://, syslog+udp:// or http(s)://")
        self.fmt = fmt
        self.token = token
        self.hostname = socket.gethostname()
        self._tcp: socket.socket | None = None

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
                        s.sendto(line.encode(), (self.url.hostname, self.url.port or 514))
            else:
                self._send_tcp("".join(line + "\n" for line in lines).encode())
        else:
            self._post_hec(events)
        for topic, _, _ in events:
            self.written[topic] += 1

    def _send_tcp(self, data: bytes) -> None:
        try:
            if self._tcp is None:
                self._tcp = socket.create_connection((self.url.hostname, self.url.port or 514), timeout=10)
            self._tcp.sendall(data)
        except OSError:
            if self._tcp is not None:
                self._tcp.close()
                self._tcp = None
            raise

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
            with urllib.request.urlopen(req, timeout=10) as resp:
                if not 200 <= resp.status < 300:
                    raise OSError(f"HEC answered {resp.status}")
        except urllib.error.HTTPError as exc:
            raise OSError(f"HEC answered {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise OSError(f"HEC unreachable: {exc.reason}") from None

    def close_destination(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
