"""Write output records as Zeek logs: ``conn.log``, ``http.log``, ``dns.log``, ``ssl.log``.

Zeek's ASCII format (TSV with its ``#separator``, ``#set_separator``, ``#empty_field``,
``#unset_field``, ``#path``, ``#open``, ``#fields``, ``#types`` header and a ``#close``
line), or Zeek's JSON lines (``json=True``: one object per line, ``ts`` in epoch seconds,
unset fields left out), so Zeek tooling (``zeek-cut``, RITA, Zui, Security Onion) reads
wirestream's output as it reads Zeek's. Field names, order and types are Zeek's default
ones; the mapping, and what wirestream cannot fill (left unset, ``-``), is in
docs/downstream.md.

The ``uid`` of a connection is made from its ``connection_id`` (``C`` and base 62, as
Zeek's look), so ``conn.log`` and the ``http.log``/``ssl.log``/``dns.log`` lines of the same
connection share it; a UDP, ICMP or SCTP flow (``wire.flows``) and a DNS query over UDP get a uid
made from the protocol, addresses and ports (:func:`flow_uid`), so a query's ``dns.log`` line
and its flow's ``conn.log`` line share it (a pair of endpoints used again after the flow's
idle minute gets the same uid again: DNS records do not carry the flow's start).

:class:`ZeekLogWriter` writes records to the files; :class:`ZeekSink` consumes the output
topics (``wirestream sink zeek``); :func:`convert_jsonl` turns ``analyze --out`` files into
logs (``analyze --zeek DIR``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from wirestream.topics import CONNECTIONS, DNS, FLOWS, TLS, TRANSACTIONS

from .base import BatchSink, Item

SEPARATOR = "\t"
SET_SEPARATOR = ","
EMPTY = "(empty)"
UNSET = "-"
#: the topics a Zeek log is made of, in the order a converter should read them (the L7
#: records first: a connection's ``service`` comes from them)
TOPIC_PATHS = {TRANSACTIONS: "http", DNS: "dns", TLS: "ssl", CONNECTIONS: "conn", FLOWS: "conn"}
#: services found per connection id, kept for the connections still to come (bounded)
MAX_SERVICES = 200_000

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# (name, Zeek type) of each log, in Zeek's order.
CONN_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("proto", "enum"), ("service", "string"), ("duration", "interval"),
    ("orig_bytes", "count"), ("resp_bytes", "count"), ("conn_state", "string"), ("local_orig", "bool"),
    ("local_resp", "bool"), ("missed_bytes", "count"), ("history", "string"), ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"), ("resp_pkts", "count"), ("resp_ip_bytes", "count"),
    ("tunnel_parents", "set[string]"), ("community_id", "string"),
]
HTTP_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("trans_depth", "count"), ("method", "string"), ("host", "string"), ("uri", "string"),
    ("referrer", "string"), ("version", "string"), ("user_agent", "string"), ("origin", "string"),
    ("request_body_len", "count"), ("response_body_len", "count"), ("status_code", "count"),
    ("status_msg", "string"), ("info_code", "count"), ("info_msg", "string"), ("tags", "set[enum]"),
    ("username", "string"), ("password", "string"), ("proxied", "set[string]"), ("orig_fuids", "vector[string]"),
    ("orig_filenames", "vector[string]"), ("orig_mime_types", "vector[string]"), ("resp_fuids", "vector[string]"),
    ("resp_filenames", "vector[string]"), ("resp_mime_types", "vector[string]"), ("community_id", "string"),
]
DNS_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("proto", "enum"), ("trans_id", "count"), ("rtt", "interval"), ("query", "string"),
    ("qclass", "count"), ("qclass_name", "string"), ("qtype", "count"), ("qtype_name", "string"),
    ("rcode", "count"), ("rcode_name", "string"), ("AA", "bool"), ("TC", "bool"), ("RD", "bool"), ("RA", "bool"),
    ("Z", "count"), ("answers", "vector[string]"), ("TTLs", "vector[interval]"), ("rejected", "bool"),
    ("community_id", "string"),
]
SSL_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("version", "string"), ("cipher", "string"), ("curve", "string"),
    ("server_name", "string"), ("resumed", "bool"), ("last_alert", "string"), ("next_protocol", "string"),
    ("established", "bool"), ("ssl_history", "string"), ("cert_chain_fps", "vector[string]"),
    ("client_cert_chain_fps", "vector[string]"), ("sni_matches_cert", "bool"), ("community_id", "string"),
]
LOG_FIELDS = {"conn": CONN_FIELDS, "http": HTTP_FIELDS, "dns": DNS_FIELDS, "ssl": SSL_FIELDS}

# DNS type and rcode numbers (IANA), for Zeek's qtype/rcode counts beside their names.
QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "HINFO": 13, "MX": 15, "TXT": 16, "AAAA": 28,
          "SRV": 33, "NAPTR": 35, "DS": 43, "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "NSEC3": 50, "TLSA": 52,
          "SVCB": 64, "HTTPS": 65, "SPF": 99, "AXFR": 252, "IXFR": 251, "ANY": 255, "CAA": 257}
RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5, "YXDOMAIN": 6,
          "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10}
# wirestream's TLS version text -> Zeek's
TLS_VERSIONS = {"SSL 2.0": "SSLv2", "SSL 3.0": "SSLv3", "TLS 1.0": "TLSv10", "TLS 1.1": "TLSv11",
                "TLS 1.2": "TLSv12", "TLS 1.3": "TLSv13"}


def uid_of(connection_id: str) -> str:
    """A Zeek-looking uid (``C`` + base 62) of a wirestream connection id (16 hex digits);
    the same id always gives the same uid."""
    try:
        n = int(connection_id, 16)
    except ValueError:  # not hex: hash it
        n = int.from_bytes(hashlib.blake2b(connection_id.encode(), digest_size=8).digest(), "big")
    digits = []
    while n:
        n, r = divmod(n, 62)
        digits.append(_B62[r])
    return "C" + ("".join(reversed(digits)) or "0")


def flow_uid(client_ip: str, client_port: int, server_ip: str, server_port: int, proto: str) -> str:
    """The uid of a flow without a connection id (a UDP, ICMP or SCTP flow, a DNS query over UDP)."""
    text = f"{proto}|{client_ip}|{client_port}|{server_ip}|{server_port}"
    return uid_of(hashlib.blake2b(text.encode(), digest_size=8).hexdigest())


def _ts(us: int | None) -> float | None:
    return None if us is None else us / 1e6


def _header(headers: dict[str, Any] | None, name: str) -> str | None:
    """A request header's value, by name in any case (the first of repeated ones)."""
    if not headers:
        return None
    for k, v in headers.items():
        if k.lower() == name:
            if isinstance(v, list):
                return str(v[0]) if v else None
            return str(v)
    return None


# --- one record -> Zeek's fields (None: unset) -------------------------------------------


def conn_fields(r: dict[str, Any], services: Iterable[str] = ()) -> dict[str, Any]:
    """``conn.log``'s fields of a ``wire.connections`` record: Zeek's originator is the
    record's client unless ``orig_is_server``."""
    flip = bool(r.get("orig_is_server"))
    o, p = ("server", "client") if flip else ("client", "server")
    o2p, p2o = ("s2c", "c2s") if flip else ("c2s", "s2c")
    duration_us = r["end_ts_us"] - r["start_ts_us"]
    # Zeek writes duration and byte counts only for a connection that lasted
    dur = duration_us > 0
    svc = sorted(set(services))
    return {
        "ts": _ts(r["start_ts_us"]), "uid": uid_of(r["connection_id"]),
        "id.orig_h": r[f"{o}_ip"], "id.orig_p": r[f"{o}_port"], "id.resp_h": r[f"{p}_ip"], "id.resp_p": r[f"{p}_port"],
        "proto": "tcp", "service": ",".join(svc) if svc else None,
        "duration": duration_us / 1e6 if dur else None,
        # payload bytes not retransmitted: the sequence space each side used, as Zeek's
        "orig_bytes": r.get(f"goodput_bytes_{o2p}", 0) if dur else None,
        "resp_bytes": r.get(f"goodput_bytes_{p2o}", 0) if dur else None,
        "conn_state": r.get("conn_state"), "local_orig": None, "local_resp": None,
        "missed_bytes": r.get("missed_bytes") if r.get("missed_bytes") is not None else 0,
        "history": r.get("history"),
        "orig_pkts": r[f"packets_{o2p}"], "orig_ip_bytes": None,
        "resp_pkts": r[f"packets_{p2o}"], "resp_ip_bytes": None,
        "tunnel_parents": None, "community_id": r.get("community_id"),
    }


def flow_fields(r: dict[str, Any]) -> dict[str, Any]:
    """``conn.log``'s fields of a ``wire.flows`` record (UDP, ICMP or SCTP). Zeek's ICMP
    ports are the type (``id.orig_p``) and the code (``id.resp_p``); its UDP history has
    ``D`` and ``d`` for payload from each side (here in that order, not in the order seen).
    Zeek has no SCTP analyser: since 7.1 it logs such a flow as any IP protocol it does not
    analyse, ``proto`` ``unknown_transport`` with both ports 0 and ``conn_state`` ``OTH``
    (its ``ip_proto`` column, 132, is not among the default fields written here), and so
    does this; the ports and the association's state stay in the ``wire.flows`` record
    (and in the uid and Community ID, which are made from them)."""
    transport = r["transport"]
    icmp, sctp = transport == "icmp", transport == "sctp"
    duration_us = r["end_ts_us"] - r["start_ts_us"]
    dur = duration_us > 0
    history = None
    if not icmp and not sctp:
        history = ("D" if r["bytes_c2s"] else "") + ("d" if r["bytes_s2c"] else "") or None
    orig_p, resp_p = (r.get("icmp_type"), r.get("icmp_code")) if icmp else (r["client_port"], r["server_port"])
    return {
        "ts": _ts(r["start_ts_us"]),
        "uid": flow_uid(r["client_ip"], r["client_port"], r["server_ip"], r["server_port"], transport),
        "id.orig_h": r["client_ip"], "id.orig_p": 0 if sctp else orig_p,
        "id.resp_h": r["server_ip"], "id.resp_p": 0 if sctp else resp_p,
        "proto": "unknown_transport" if sctp else transport, "service": r.get("service"),
        "duration": duration_us / 1e6 if dur else None,
        "orig_bytes": r["bytes_c2s"] if dur else None, "resp_bytes": r["bytes_s2c"] if dur else None,
        "conn_state": "OTH" if sctp else r["conn_state"], "local_orig": None, "local_resp": None, "missed_bytes": 0,
        "history": history,
        "orig_pkts": r["packets_c2s"], "orig_ip_bytes": None, "resp_pkts": r["packets_s2c"], "resp_ip_bytes": None,
        "tunnel_parents": None, "community_id": r.get("community_id"),
    }


def http_fields(r: dict[str, Any], depth: int) -> dict[str, Any]:
    """``http.log``'s fields of a ``wire.transactions`` record (``depth``: its place among
    its connection's transactions, from 1)."""
    req = r.get("request_headers") or {}
    return {
        "ts": _ts(r["request_ts_us"]), "uid": uid_of(r["connection_id"]),
        "id.orig_h": r["client_ip"], "id.orig_p": r["client_port"], "id.resp_h": r["server_ip"],
        "id.resp_p": r["server_port"], "trans_depth": depth, "method": r.get("method"), "host": r.get("host"),
        "uri": r.get("path"), "referrer": _header(req, "referer"), "version": None,
        "user_agent": _header(req, "user-agent"), "origin": _header(req, "origin"),
        "request_body_len": r.get("request_body_size", 0), "response_body_len": r.get("response_body_size", 0),
        "status_code": r.get("status"), "status_msg": None, "info_code": None, "info_msg": None,
        "tags": [], "username": None, "password": None, "proxied": None, "orig_fuids": None,
        "orig_filenames": None, "orig_mime_types": None, "resp_fuids": None, "resp_filenames": None,
        "resp_mime_types": None, "community_id": r.get("community_id"),
    }


def dns_fields(r: dict[str, Any]) -> dict[str, Any]:
    """``dns.log``'s fields of a ``wire.dns`` record."""
    transport = r.get("transport", "udp")
    cid = r.get("connection_id")
    uid = uid_of(cid) if cid else flow_uid(r["client_ip"], r["client_port"], r["server_ip"], r["server_port"],
                                           transport)
    answers = r.get("answers") or []
    qtype, rcode = r.get("query_type"), r.get("rcode")
    latency = r.get("latency_us")
    return {
        "ts": _ts(r["query_ts_us"]), "uid": uid, "id.orig_h": r["client_ip"], "id.orig_p": r["client_port"],
        "id.resp_h": r["server_ip"], "id.resp_p": r["server_port"], "proto": transport,
        "trans_id": r.get("query_id"), "rtt": latency / 1e6 if latency is not None else None,
        "query": r.get("query_name"), "qclass": None, "qclass_name": None,
        "qtype": QTYPES.get(qtype) if qtype else None, "qtype_name": qtype,
        "rcode": RCODES.get(rcode) if rcode else None, "rcode_name": rcode,
        "AA": None, "TC": r.get("truncated"), "RD": None, "RA": None, "Z": None,
        "answers": [a["data"] for a in answers] if answers else None,
        "TTLs": [float(a["ttl"]) for a in answers] if answers else None,
        "rejected": None, "community_id": r.get("community_id"),
    }


def ssl_fields(r: dict[str, Any]) -> dict[str, Any]:
    """``ssl.log``'s fields of a ``wire.tls`` record."""
    version = r.get("version")
    return {
        "ts": _ts(r["client_hello_ts_us"]), "uid": uid_of(r["connection_id"]),
        "id.orig_h": r["client_ip"], "id.orig_p": r["client_port"], "id.resp_h": r["server_ip"],
        "id.resp_p": r["server_port"], "version": TLS_VERSIONS.get(version, version) if version else None,
        "cipher": r.get("cipher_suite"), "curve": None, "server_name": r.get("server_name"),
        "resumed": r.get("resumed"), "last_alert": r.get("alert"), "next_protocol": r.get("alpn"),
        "established": r.get("established"), "ssl_history": None, "cert_chain_fps": None,
        "client_cert_chain_fps": None, "sni_matches_cert": None, "community_id": r.get("community_id"),
    }


# --- Zeek's text of a value ---------------------------------------------------------------


def _escape(text: str, in_set: bool = False) -> str:
    """Zeek's ASCII writer's escaping: the separator, non-printable characters and (in a
    set or vector) the set separator as ``\\xNN``; a value that would read as the unset or
    empty marker escaped too."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\" or ch == SEPARATOR or o < 0x20 or o == 0x7F or (in_set and ch == SET_SEPARATOR):
            out.append(f"\\x{o:02x}")
        else:
            out.append(ch)
    s = "".join(out)
    if s in (UNSET, EMPTY):
        s = "".join(f"\\x{ord(c):02x}" for c in s)
    return s


def tsv_value(value: Any, kind: str) -> str:
    """The text of one field in Zeek's TSV."""
    if value is None:
        return UNSET
    if kind.startswith(("set[", "vector[")):
        if not value:
            return EMPTY
        inner = kind[kind.index("[") + 1 : -1]
        return SET_SEPARATOR.join(_escape(tsv_value(v, inner), in_set=True) for v in value)
    if kind == "bool":
        return "T" if value else "F"
    if kind in ("time", "interval"):
        return f"{value:.6f}"
    if kind in ("count", "port", "int"):
        return str(int(value))
    text = str(value)
    return _escape(text) if text else EMPTY


def json_value(value: Any, kind: str) -> Any:
    if kind in ("count", "port", "int") and value is not None:
        return int(value)
    return value


def _zeek_time(t: float) -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(t))


class ZeekLogWriter:
    """``DIR/conn.log``, ``http.log``, ``dns.log``, ``ssl.log`` (TSV, or JSON lines with
    ``json=True``), written a record at a time.

    A file is opened when its first line comes (a log with no record is not written) and
    appended to: a new run adds a new header block to an existing file, as Zeek's readers
    (zeek-cut) expect; :meth:`close` writes each file's ``#close`` line."""

    def __init__(self, out_dir: str | os.PathLike[str], json_lines: bool = False,
                 clock: Callable[[], float] = time.time, file_mode: int = 0o600) -> None:
        """``file_mode``: of the files this writer creates (default 600: the logs hold
        what the wire carried, URIs and host names; 640 to let a group read them)."""
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file_mode = file_mode
        self.json = json_lines
        self.clock = clock
        self._files: dict[str, Any] = {}
        # per connection: HTTP transactions seen (trans_depth) and services (conn's service)
        self._depth: OrderedDict[str, int] = OrderedDict()
        self._services: OrderedDict[str, set[str]] = OrderedDict()
        self.written: dict[str, int] = {}

    def path(self, log: str) -> Path:
        return self.dir / f"{log}.log"

    def _file(self, log: str) -> Any:
        f = self._files.get(log)
        if f is None:
            fd = os.open(self.path(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, self.file_mode)
            f = self._files[log] = os.fdopen(fd, "a", encoding="utf-8", buffering=1 << 16)
            if not self.json:
                fields = LOG_FIELDS[log]
                f.write("#separator \\x09\n"
                        f"#set_separator{SEPARATOR}{SET_SEPARATOR}\n"
                        f"#empty_field{SEPARATOR}{EMPTY}\n"
                        f"#unset_field{SEPARATOR}{UNSET}\n"
                        f"#path{SEPARATOR}{log}\n"
                        f"#open{SEPARATOR}{_zeek_time(self.clock())}\n"
                        f"#fields{SEPARATOR}{SEPARATOR.join(n for n, _ in fields)}\n"
                        f"#types{SEPARATOR}{SEPARATOR.join(t for _, t in fields)}\n")
        return f

    def _remember(self, table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > MAX_SERVICES:
            table.popitem(last=False)

    def _line(self, log: str, values: dict[str, Any]) -> None:
        fields = LOG_FIELDS[log]
        if self.json:
            obj = {n: json_value(values[n], t) for n, t in fields if values[n] is not None}
            line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        else:
            line = SEPARATOR.join(tsv_value(values[n], t) for n, t in fields)
        self._file(log).write(line + "\n")
        self.written[log] = self.written.get(log, 0) + 1

    def _service(self, cid: str | None, service: str) -> None:
        if cid:
            s = self._services.get(cid) or set()
            s.add(service)
            self._remember(self._services, cid, s)

    def write(self, topic: str, record: dict[str, Any]) -> None:
        """One record of an output topic (other topics are ignored)."""
        if topic == CONNECTIONS:
            if not record.get("final", True):
                return  # an interim record: the connection's line comes with its final one
            cid = record["connection_id"]
            services = self._services.pop(cid, set())
            self._depth.pop(cid, None)
            self._line("conn", conn_fields(record, services))
        elif topic == FLOWS:
            self._line("conn", flow_fields(record))
        elif topic == TRANSACTIONS:
            cid = record["connection_id"]
            depth = self._depth.get(cid, 0) + 1
            self._remember(self._depth, cid, depth)
            self._service(cid, "http")
            self._line("http", http_fields(record, depth))
        elif topic == DNS:
            self._service(record.get("connection_id"), "dns")
            self._line("dns", dns_fields(record))
        elif topic == TLS:
            self._service(record["connection_id"], "ssl")
            self._line("ssl", ssl_fields(record))

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self) -> list[Path]:
        """Write the ``#close`` lines and close the files; return their paths."""
        paths = []
        for log, f in self._files.items():
            if not self.json:
                f.write(f"#close{SEPARATOR}{_zeek_time(self.clock())}\n")
            f.close()
            paths.append(self.path(log))
        self._files = {}
        return paths


def convert_jsonl(jsonl_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  json_lines: bool = False) -> list[Path]:
    """Zeek logs from ``analyze --out`` files (``DIR/<topic>.jsonl``): the L7 records first,
    so that each connection's ``service`` is known when its line is written."""
    writer = ZeekLogWriter(out_dir, json_lines)
    src = Path(jsonl_dir)
    try:
        for topic in TOPIC_PATHS:
            path = src / f"{topic}.jsonl"
            if not path.exists():
                continue
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        writer.write(topic, json.loads(line))
    finally:
        paths = writer.close()
    return paths


class ZeekSink(BatchSink):
    """Consume the output topics and append them to Zeek logs in ``out_dir``."""

    name = "zeek sink"

    def __init__(self, bootstrap: str, registry: str, out_dir: str, json_lines: bool = False,
                 topics: list[str] | None = None, group: str = "wirestream-sink-zeek",
                 flush_records: int = 10_000, flush_seconds: float = 5.0, from_beginning: bool = True,
                 file_mode: int = 0o600) -> None:
        topics = topics or list(TOPIC_PATHS)
        unknown = [t for t in topics if t not in TOPIC_PATHS]
        if unknown:
            raise ValueError(f"no Zeek log for {', '.join(unknown)}: topics are {', '.join(TOPIC_PATHS)}")
        # opened first: a folder that cannot be written is an error before joining a group
        self.writer = ZeekLogWriter(out_dir, json_lines, file_mode=file_mode)
        super().__init__(bootstrap, registry, topics, group, flush_records, flush_seconds, from_beginning)

    def write(self, batch: list[Item]) -> None:
        # L7 records of the batch before its connections: their service is then known
        order = {t: i for i, t in enumerate(TOPIC_PATHS)}
        for item in sorted(batch, key=lambda it: order.get(it.topic, 0)):
            self.writer.write(item.topic, item.record)
            self.written[item.topic] += 1
        self.writer.flush()

    def close_destination(self) -> None:
        self.writer.close()
