//! wirestream's compiled packet core, imported from Python as `wirestream._core`.
//!
//! The per-packet and per-message paths live here (docs/core.md); everything around them
//! stays Python. One module per concern, in the order the data flows; each module's
//! doc comment says what it takes and what it gives:
//!
//! - [`capture_file`]: pcap/pcapng (gzip too) -> frames, damage counted by name;
//! - [`decode`]: frames -> packet headers ([`decode::link`] -> [`decode::ip`] ->
//!   [`decode::transport`]), drops counted by reason;
//! - [`community_id`]: the Community ID v1 of a flow, the records' `community_id`;
//! - [`flow`]: the UDP flows of a partition (Zeek's conn.log notion), with their checkpoint encoding;
//! - [`layout`]: the packed 80-byte header of `wire.packets` and the partition of a flow;
//! - [`batch`]: per-partition batches (header block + payload blob);
//! - [`replay`]: the producer's loop over them;
//! - [`ring`]: the live capture's TPACKET_V3 ring reader, feeding the same decoder and
//!   batcher;
//! - [`tcp`]: the per-partition TCP connection tracker and Wireshark 4.0's sequence
//!   analysis, with their checkpoint encoding;
//! - [`reassembly`]: TCP stream reassembly (in-order bytes and gaps of one direction),
//!   run by the tracker for each L7 connection;
//! - [`tls_decrypt`]: TLS 1.2/1.3 record decryption with an NSS key log (issue 19), feeding the L7 analysers plaintext;
//! - [`l7`]: the L7 analysers' per-chunk work (HTTP/1.x, DNS, TLS handshakes), with their checkpoint encoding;
//! - [`state_bytes`]: the checkpoint states' shared byte codec (writer, checked reader, envelope);
//! - [`avro`]: output records -> Avro binary, compiled from their schema;
//! - [`avro_read`]: Avro binary -> records (the readers of topics), on the same compiled schema;
//! - [`avro_text`]: a bytes value (a body) as the JSON literal of its text, for the JSONL files;
//! - `python`, `python_tcp`, `python_http`, `python_dns`, `python_tls`, `python_avro`, `python_flow`: the Python classes over all of it.

use pyo3::prelude::*;

pub mod avro;
pub mod avro_json;
pub mod avro_read;
pub mod avro_text;
pub mod batch;
pub mod bytes;
pub mod capture_file;
pub mod community_id;
pub mod decode;
pub mod flow;
pub mod l7;
pub mod layout;
pub mod line_files;
mod python;
pub mod reassembly;
pub mod replay;
pub mod ring;
pub mod state_bytes;
pub mod tcp;
#[cfg(test)]
pub mod test_rng;
pub mod tls_decrypt;
mod python_tcp;
mod python_avro;
mod python_http;
mod python_dns;
mod python_tls;
mod python_resp;
mod python_pgsql;
mod python_mysql;
mod python_h2;
mod python_kafka;
mod python_flow;

/// The version of the compiled core (the crate's), for `wirestream doctor`.
#[pyfunction]
fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(core_version, m)?)?;
    m.add_function(wrap_pyfunction!(python::supported_linktypes, m)?)?;
    m.add_function(wrap_pyfunction!(python::open_capture, m)?)?;
    m.add_class::<python::PyCaptureReader>()?;
    m.add_class::<python::PyFrameDecoder>()?;
    m.add_class::<python::PyBatcher>()?;
    m.add_class::<python::PyRingFeed>()?;
    m.add_class::<python_tcp::PyTcpTracker>()?;
    m.add_class::<python_tcp::PyTcpEvents>()?;
    m.add_class::<python_tcp::PyStreamReassembler>()?;
    m.add_class::<python_http::PyHttpConnection>()?;
    m.add_class::<python_dns::PyDnsMatcher>()?;
    m.add_class::<python_dns::PyDnsTcp>()?;
    m.add_class::<python_tls::PyTlsConnection>()?;
    m.add_class::<python_resp::PyRespConnection>()?;
    m.add_class::<python_pgsql::PyPgConnection>()?;
    m.add_class::<python_mysql::PyMysqlConnection>()?;
    m.add_class::<python_h2::PyH2Connection>()?;
    m.add_class::<python_kafka::PyKafkaConnection>()?;
    m.add_function(wrap_pyfunction!(python_kafka::kafka_api, m)?)?;
    m.add_function(wrap_pyfunction!(python_pgsql::redact_sql, m)?)?;
    m.add_class::<python_tls::PyKeyLog>()?;
    m.add_function(wrap_pyfunction!(python_tls::looks_like_tls_client_hello, m)?)?;
    m.add_class::<python_avro::PyAvroWriter>()?;
    m.add_class::<python_avro::PyAvroReader>()?;
    m.add_class::<python_avro::PyJsonLinesFiles>()?;
    m.add_function(wrap_pyfunction!(python_avro::json_text, m)?)?;
    m.add_function(wrap_pyfunction!(python_flow::community_id_of, m)?)?;
    m.add_class::<python_flow::PyFlowTable>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_the_crate_version() {
        assert_eq!(super::core_version(), env!("CARGO_PKG_VERSION"));
    }
}
