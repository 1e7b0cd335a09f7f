//! Application-layer analysers of the compiled core (docs/l7.md).
//!
//! - [`http`]: HTTP/1.x over one TCP connection: message framing, request/response
//!   pairing and the per-direction resynchronising state machine; the Python face is
//!   `python_http` (`wirestream._core.HttpConnection`), wrapped by
//!   `processors/l7/http.py`.
//! - [`dns`]: DNS over UDP and TCP: message parsing, query/response matching
//!   (Wireshark's `dns.time`), the TCP length framing; the Python face is `python_dns`
//!   (`wirestream._core.DnsMatcher`, `DnsTcp`), wrapped by `processors/l7/dns.py`.
//! - [`resp`]: RESP (Redis), RESP2 and RESP3, one streaming parser per direction that
//!   keeps a command's name and key and a reply's type, size and error; the Python face
//!   is `python_resp` (`wirestream._core.RespConnection`), wrapped by
//!   `processors/l7/redis.py`.
//! - [`h2`]: HTTP/2 and gRPC, a frame parser and HPACK decoder per direction, one
//!   transaction per stream; the Python face is `python_h2`
//!   (`wirestream._core.H2Connection`), wrapped by `processors/l7/http2.py`.
//! - [`kafka`]: the Kafka protocol, every version Apache Kafka 4.4 speaks: frames both
//!   ways, responses read with their request's API and version, Produce requests and
//!   Fetch responses streamed (records counted from batch headers); the Python face is
//!   `python_kafka` (`wirestream._core.KafkaConnection`), wrapped by
//!   `processors/l7/kafka.py`.
//! - [`mysql`]: the MySQL/MariaDB protocol, one connection-level state machine (a
//!   response's framing depends on its command) that pairs commands with OK, ERR,
//!   result sets and prepared statements' answers; the Python face is `python_mysql`
//!   (`wirestream._core.MysqlConnection`), wrapped by `processors/l7/mysql.py`.
//! - [`pgsql`]: PostgreSQL's frontend/backend protocol, one streaming framer per
//!   direction that keeps a message's type and the few fields a record needs (query
//!   text, statement and portal names, command tag, error code) and counts result rows;
//!   the Python face is `python_pgsql` (`wirestream._core.PgConnection`), wrapped by
//!   `processors/l7/postgres.py`. [`sql`] redacts SQL text's literals.
//! - [`tls`]: TLS handshakes over one TCP connection: record layer, handshake message
//!   framing and the handshake state machine; the Python face is `python_tls`
//!   (`wirestream._core.TlsConnection`), wrapped by `processors/l7/tls.py`.

pub mod dns;
pub mod h2;
pub mod http;
pub mod kafka;
pub mod mysql;
pub mod pgsql;
pub mod resp;
pub mod sql;
pub mod tls;
