"""Every detector fires on a capture made for it and stays quiet on one that is not.

Real captures where one exists (tests/data); generated ones (tests/synthetic_http.py)
otherwise. The captures go through the in-process pipeline (decoder, tracker, L7,
observer, windows: tests/local_pipeline.local_windows); test_windows_restart.py and the
DVWA test below run the same code through the broker and Faust.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import DATA
from local_pipeline import local_windows
from synthetic_http import http_connection, request, response, unanswered_syn, write_frames
from wirestream.processors.detections import Thresholds, WindowCounts, detect
from wirestream.processors.findings import Finding, findings_of
from wirestream.processors.l7.base import L7Options, StreamContext
from wirestream.processors.l7.http import HttpAnalyzer
from wirestream.processors.l7.redact import body_findings
from wirestream.processors.observations import Observer, unpack_rows

from wirestream.topics import TRANSACTIONS

CS = DATA / "chrissanders"
QUIET = str(CS / "http_espn.pcapng")  # 25 healthy connections, 61 HTTP transactions, DNS
T0 = 1_800_000_000_000_000
SERVER = "192.0.2.80"
OK = response(200, body=b"fine")


def alerts(path: str, *thresholds: str) -> list[dict]:
    return local_windows(path, list(thresholds))["wire.alerts"]


def kinds(path: str, *thresholds: str) -> set[str]:
    return {a["kind"] for a in alerts(path, *thresholds)}


def capture(tmp_path: Path, frames: list) -> str:
    return write_frames(str(tmp_path / "t.pcap"), frames)


def one_client(exchanges: list, **kw) -> list:
    return http_connection("10.1.1.1", 40000, SERVER, 80, T0, exchanges, **kw)


# --- real captures ----------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "path", "threshold"), [
    ("retransmission_band", CS / "tcp_retransmissions.pcapng", "retrans_min_data_packets=1"),
    ("zero_window_storm", CS / "tcp_zerowindowdead.pcapng", "zero_window_connections=1"),
    ("reset_storm", CS / "tcp_refuseconnection.pcapng", "reset_connections=1"),
    ("nxdomain_burst", CS / "dns_query_nonexistent.pcapng", "nxdomain_per_client=1"),
    ("cleartext_credentials", CS / "http_dvwa_clearlogin.pcapng", "timeouts=5"),
])
def test_fires_on_a_real_capture_and_not_on_a_quiet_one(kind: str, path: Path, threshold: str) -> None:
    fired = alerts(str(path), threshold)
    assert kind in {a["kind"] for a in fired}
    assert kind not in kinds(QUIET, threshold)
    alert = next(a for a in fired if a["kind"] == kind)
    assert alert["service"] and alert["summary"] and alert["evidence"]["window_start_ts_us"]


def test_the_dvwa_password_is_reported_with_its_client() -> None:
    (a,) = [a for a in alerts(str(CS / "http_dvwa_clearlogin.pcapng")) if a["kind"] == "cleartext_credentials"]
    assert a["evidence"]["client"] == "10.2.2.101"
    assert a["evidence"]["passwords_in_forms"] == "1"
    assert a["severity"] == "critical"


def test_retransmission_band_needs_enough_data_by_default() -> None:
    # 6 data packets are not a basis for a band: the default threshold is 100.
    assert "retransmission_band" not in kinds(str(CS / "tcp_retransmissions.pcapng"))


# --- generated captures -----------------------------------------------------------------

def test_syn_flood(tmp_path: Path) -> None:
    flood = [f for i in range(60) for f in unanswered_syn(f"10.7.{i // 200}.{i % 200 + 1}", 30000 + i,
                                                         SERVER, 443, T0 + i * 1000)]
    assert "syn_flood" in kinds(capture(tmp_path, flood))
    assert "syn_flood" not in kinds(capture(tmp_path, flood[:49]))  # below the default 50


def test_errors_5xx_spike(tmp_path: Path) -> None:
    bad = one_client([(request(target=f"/{i}"), response(503, "Unavailable"), 500) for i in range(12)]
                     + [(request(target=f"/ok{i}"), OK, 500) for i in range(40)])
    assert "errors_5xx_spike" in kinds(capture(tmp_path, bad))
    few = one_client([(request(target=f"/{i}"), response(503, "Unavailable"), 500) for i in range(5)]
                     + [(request(target=f"/ok{i}"), OK, 500) for i in range(40)])
    assert "errors_5xx_spike" not in kinds(capture(tmp_path, few))


def test_auth_failure_burst_per_client(tmp_path: Path) -> None:
    frames = one_client([(request(target=f"/admin?try={i}"), response(401, "Unauthorized"), 300)
                         for i in range(25)])
    (a,) = [a for a in alerts(capture(tmp_path, frames)) if a["kind"] == "auth_failure_burst"]
    assert a["evidence"]["client"] == "10.1.1.1" and a["evidence"]["auth_failures"] == "25"
    # the same 25 failures spread over 5 clients: 5 each, nobody bursts
    spread = [f for c in range(5) for f in http_connection(
        f"10.1.2.{c + 1}", 40000, SERVER, 80, T0,
        [(request(target=f"/admin?try={i}"), response(403, "Forbidden"), 300) for i in range(5)])]
    assert "auth_failure_burst" not in kinds(capture(tmp_path, spread))


def test_rate_limited_client(tmp_path: Path) -> None:
    limited = one_client([(request(target=f"/api/{i}"), response(429, "Too Many Requests"), 100)
                          for i in range(12)])
    assert "rate_limited" in kinds(capture(tmp_path, limited))
    assert "rate_limited" not in kinds(capture(tmp_path, limited[:3 + 2 * 5]))  # 5 of them


def test_retry_storm(tmp_path: Path) -> None:
    # the same request every 50 ms
    retries = one_client([(request(target="/checkout"), response(502, "Bad Gateway"), 1_000)] * 15,
                         gap_us=50_000)
    assert "retry_storm" in kinds(capture(tmp_path, retries))
    # the same request every 2 s is not a storm, nor are 15 different requests
    slow = one_client([(request(target="/checkout"), OK, 1_000)] * 15, gap_us=2_000_000)
    assert "retry_storm" not in kinds(capture(tmp_path, slow))
    varied = one_client([(request(target=f"/item/{i}"), OK, 1_000) for i in range(15)], gap_us=50_000)
    assert "retry_storm" not in kinds(capture(tmp_path, varied))


def test_request_timeouts(tmp_path: Path) -> None:
    hung = [f for c in range(6) for f in http_connection(
        f"10.1.3.{c + 1}", 41000, SERVER, 80, T0 + c * 1000, [(request(target="/slow"), None, 0)])]
    (a,) = [a for a in alerts(capture(tmp_path, hung)) if a["kind"] == "request_timeouts"]
    assert a["evidence"]["no_response"] == "6"
    answered = [f for c in range(6) for f in http_connection(
        f"10.1.3.{c + 1}", 41000, SERVER, 80, T0 + c * 1000, [(request(target="/slow"), OK, 5_000)])]
    assert "request_timeouts" not in kinds(capture(tmp_path, answered))


def test_slow_requests(tmp_path: Path) -> None:
    """Requests slower than slow_request_us (1 s), at least slow_requests (10) of them in
    a window: one alert; the same requests at 0.5 s: none."""
    slow = [f for c in range(11) for f in http_connection(
        f"10.1.4.{c + 1}", 41000, SERVER, 80, T0 + c * 1000, [(request(target="/report"), OK, 1_200_000)])]
    (a,) = [a for a in alerts(capture(tmp_path, slow)) if a["kind"] == "slow_requests"]
    assert a["evidence"]["slow_requests"] == "11" and a["evidence"]["threshold_us"] == "1000000"
    assert a["severity"] == "warning" and "11 requests slower than 1000 ms" in a["summary"]
    quick = [f for c in range(11) for f in http_connection(
        f"10.1.4.{c + 1}", 41000, SERVER, 80, T0 + c * 1000, [(request(target="/report"), OK, 500_000)])]
    assert "slow_requests" not in kinds(capture(tmp_path, quick))


@pytest.mark.parametrize("headers", ["Authorization: Basic YWRtaW46aHVudGVyMg==\r\n",
                                     "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x\r\n"])
def test_cleartext_credentials_in_headers(tmp_path: Path, headers: str) -> None:
    frames = one_client([(request(target="/private", headers=headers), OK, 500)])
    (a,) = [a for a in alerts(capture(tmp_path, frames)) if a["kind"] == "cleartext_credentials"]
    assert ("basic_credentials" if "Basic" in headers else "bearer_tokens") in a["evidence"]
    plain = one_client([(request(target="/private", headers="Authorization-Hint: none\r\n"), OK, 500)])
    assert "cleartext_credentials" not in kinds(capture(tmp_path, plain))


def test_payment_card_and_ssn_in_cleartext(tmp_path: Path) -> None:
    form = "Content-Type: application/x-www-form-urlencoded\r\n"
    card = one_client([(request("POST", "/pay", headers=form, body=b"card=4111111111111111&cvv=123"), OK, 500)])
    (a,) = [a for a in alerts(capture(tmp_path, card)) if a["kind"] == "pii_in_cleartext"]
    assert a["evidence"]["card_numbers"] == "1"
    ssn = one_client([(request("POST", "/apply", headers=form, body=b"ssn=123-45-6789"), OK, 500)])
    assert "pii_in_cleartext" in kinds(capture(tmp_path, ssn))
    # not Luhn-valid, not an SSN
    clean = one_client([(request("POST", "/pay", headers=form, body=b"ref=4111111111111112&d=2026-11-27"),
                         OK, 500)])
    assert "pii_in_cleartext" not in kinds(capture(tmp_path, clean))


def test_one_alert_per_condition_per_window_with_counts(tmp_path: Path) -> None:
    """500 failing requests: one errors_5xx_spike alert that says 500, not 500 alerts."""
    frames = one_client([(request(target=f"/x{i}"), response(503, "Unavailable"), 100) for i in range(500)],
                        gap_us=1_000)
    fired = alerts(capture(tmp_path, frames))
    assert [a["kind"] for a in fired].count("errors_5xx_spike") == 1
    (a,) = [a for a in fired if a["kind"] == "errors_5xx_spike"]
    assert a["evidence"]["errors_5xx"] == "500"


def test_findings_travel_beside_the_record_not_in_it() -> None:
    """The analyser's findings reach the observation row, and never the record's keys
    (which are what gets encoded and what every sink sees)."""
    records: list[dict] = []
    ctx = StreamContext(ips=("10.0.0.1", "10.0.0.2"), ports=(40000, 80),
                        connection_id=lambda: "c", emit=lambda t, k, r: records.append(r),
                        options=L7Options())
    http = HttpAnalyzer(ctx, 0)
    body = b"user=bob&password=hunter2&card=4111 1111 1111 1111"
    http.on_data(0, b"POST /login HTTP/1.1\r\nHost: h\r\nAuthorization: Basic eDp5\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body), 1)
    http.on_data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    http.on_data(0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 3)
    http.on_data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    login, plain = records
    assert findings_of(login) == (Finding.BASIC_CREDENTIALS | Finding.PASSWORD_IN_FORM
                                  | Finding.CARD_NUMBER)
    assert findings_of(plain) == 0 and type(plain) is dict
    assert set(login) == set(plain)  # the same fields: nothing extra to encode
    batches: list[dict] = []
    observer = Observer(lambda part, batch: batches.append(batch), "s", 0, 1, 1)
    for r in records:
        r.update(source_id="s", server_service=None, server_workload=None)
        observer.observe(TRANSACTIONS, r)
    observer.flush(end_of_input=True)
    (batch,) = batches
    assert [row[1] for row in unpack_rows(batch)] == [1 | 4 | 8, 0]
    # the same login read from TLS decrypted with a key log went encrypted: no cleartext finding
    login["tls"] = True
    observer.observe(TRANSACTIONS, login)
    observer.flush(end_of_input=True)
    assert [row[1] for row in unpack_rows(batches[-1])] == [0]


def test_body_findings() -> None:
    form = "application/x-www-form-urlencoded"
    assert body_findings(b"user=a&password=secret", form) == Finding.PASSWORD_IN_FORM
    assert body_findings(b"user=a&password=", form) == 0  # an empty password is not one
    assert body_findings(b'{"pass": "x"}', "application/json") == Finding.PASSWORD_IN_FORM
    assert body_findings(b"pay 4111 1111 1111 1111 now", "text/plain") == Finding.CARD_NUMBER
    assert body_findings(b"name=x&ssn=078-05-1120", form) == Finding.OTHER_PII
    assert body_findings(b"ssn=000-12-3456&b=666-12-3456", form) == 0
    assert body_findings(b"ssn 078-05-1120", "text/html") == 0  # only typed-in (form/JSON) bodies
    assert body_findings(b"4111111111111111", "image/png") == 0


def test_detect_reads_plain_counts() -> None:
    """detect() needs only counts: a window's at the default thresholds, built by hand."""
    counts = dict.fromkeys(("connections", "requests", "errors_5xx", "no_response", "reset",
                            "refused", "incomplete_handshake", "half_open", "data_packets",
                            "retrans_data", "zero_window_connections", "zero_windows",
                            "dns_queries"), 0)
    counts.update(requests=100, errors_5xx=10, data_packets=1000, retrans_data=20)
    clients = {"10.0.0.9": {"passwords_in_forms": 2, "basic_credentials": 1, "other_pii": 1}}
    alerts = {a["kind"]: a for a in detect(WindowCounts(0, 10_000_000, counts, clients),
                                           "src", "svc:80", "healthy", Thresholds())}
    assert set(alerts) == {"retransmission_band", "errors_5xx_spike", "cleartext_credentials",
                           "pii_in_cleartext"}
    assert alerts["retransmission_band"]["evidence"]["band"] == "degraded"
    creds = alerts["cleartext_credentials"]
    assert creds["summary"].endswith("(basic_credentials 1, passwords_in_forms 2)")
    assert creds["evidence"]["client"] == "10.0.0.9"
    assert alerts["pii_in_cleartext"]["evidence"]["other_pii"] == "1"
    # the same band again is no news
    again = detect(WindowCounts(0, 10_000_000, counts, {}), "src", "svc:80", "degraded",
                   Thresholds())
    assert "retransmission_band" not in {a["kind"] for a in again}


def test_thresholds_are_configurable_and_checked() -> None:
    t = Thresholds.parse(["errors_5xx=3", "errors-5xx-share=0.5"])
    assert t == Thresholds(errors_5xx=3, errors_5xx_share=0.5)  # and nothing else changed
    with pytest.raises(ValueError, match="unknown alert threshold"):
        Thresholds.parse(["nope=1"])
    with pytest.raises(ValueError, match="needs a number"):
        Thresholds.parse(["errors_5xx=lots"])
