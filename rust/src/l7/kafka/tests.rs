//! The Kafka parser's own tests: frames written here from Kafka's message definitions.

use super::*;

fn batch(count: i32, attributes: i16, body: usize) -> Vec<u8> {
    let mut after = Vec::new();
    after.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    after.push(2); // magic
    after.extend_from_slice(&0u32.to_be_bytes()); // crc
    after.extend_from_slice(&attributes.to_be_bytes());
    after.extend_from_slice(&(count - 1).to_be_bytes());
    after.extend_from_slice(&[0u8; 16]); // timestamps
    after.extend_from_slice(&(-1i64).to_be_bytes());
    after.extend_from_slice(&(-1i16).to_be_bytes());
    after.extend_from_slice(&(-1i32).to_be_bytes());
    after.extend_from_slice(&count.to_be_bytes());
    after.extend(std::iter::repeat_n(b'r', body));
    let mut b = 0i64.to_be_bytes().to_vec();
    b.extend_from_slice(&(after.len() as i32).to_be_bytes());
    b.extend(after);
    b
}

fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

/// A Produce v9 request (flexible) of `records` (one topic "t", one partition).
fn produce_v9(corr: i32, records: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&9i16.to_be_bytes());
    b.extend_from_slice(&corr.to_be_bytes());
    b.extend_from_slice(&3i16.to_be_bytes());
    b.extend_from_slice(b"app");
    b.push(0); // header tags
    b.push(0); // transactional id: null
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&1000i32.to_be_bytes());
    b.extend_from_slice(&[2, 2, b't', 2]); // one topic "t", one partition
    b.extend_from_slice(&0i32.to_be_bytes());
    let mut n = records.len() + 1; // a compact length: an unsigned varint
    while n >= 0x80 {
        b.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    b.push(n as u8);
    b.extend_from_slice(records);
    b.extend_from_slice(&[0, 0, 0]); // partition, topic and request tags
    framed(b)
}

fn produce_response_v9(corr: i32, error: i16) -> Vec<u8> {
    let mut b = corr.to_be_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(&[2, 2, b't', 2]);
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&[0u8; 24]); // base offset, log append time, log start offset
    b.extend_from_slice(&[1, 0, 0, 0]); // record errors [], error message null, tags
    b.push(0); // topic tags
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(0);
    framed(b)
}

fn run(chunks: &[(usize, Vec<u8>)], every: usize) -> Vec<Message> {
    let mut c = Connection::new(0);
    let mut out = Vec::new();
    for (d, data) in chunks {
        for piece in data.chunks(every.max(1)) {
            c.feed(*d, piece, &mut out);
            c = Connection::restore(&c.snapshot()).expect("a snapshot restores");
        }
    }
    out
}

fn conversation() -> Vec<(usize, Vec<u8>)> {
    let records = [batch(3, 3, 20), batch(2, 3, 20), batch(1, 0x20, 4)].concat();
    vec![(0, produce_v9(7, &records)), (1, produce_response_v9(7, 6))]
}

#[test]
fn a_produce_and_its_response_in_any_split() {
    for every in [1, 2, 7, 1000] {
        let out = run(&conversation(), every);
        assert_eq!(out.len(), 2, "split {every}");
        let (req, resp) = (&out[0], &out[1]);
        assert_eq!((req.api_key, req.api_version, req.correlation_id), (0, 9, 7));
        assert_eq!(req.client_id.as_deref(), Some("app"));
        assert_eq!(req.topics, vec!["t".to_string()]);
        // control batches are not data records
        assert_eq!((req.records, req.batches, req.compression), (Some(5), 3, Some(3)));
        assert_eq!(req.parse_error, None);
        assert!(resp.response && resp.api_key == 0 && resp.correlation_id == 7);
        assert_eq!((resp.error_code, resp.errors, resp.partitions), (6, 1, 1));
    }
}

#[test]
fn a_record_set_cut_short_counts_its_whole_batches_only() {
    let mut scan = records::RecordScan::new(0);
    let set = [batch(4, 0, 10), batch(9, 0, 10)[..40].to_vec()].concat();
    scan.left = set.len();
    assert_eq!(scan.feed(&set), set.len());
    assert_eq!((scan.records, scan.partial), (4, 1));
}

#[test]
fn a_gap_inside_a_frame_keeps_the_next_frames() {
    let conv = conversation();
    let mut c = Connection::new(0);
    let mut out = Vec::new();
    let frame = &conv[0].1;
    c.feed(0, &frame[..30], &mut out);
    c.gap(0, 10, &mut out);
    c.feed(0, &frame[40..], &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].parse_error, Some("gap"));
    c.feed(1, &conv[1].1, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].error_code, 6);
}

#[test]
fn topic_ids_print_as_kafka_prints_them() {
    assert_eq!(wire::topic_id_text(&[0; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(wire::topic_id_text(&[0xff; 16]), "_____________________w");
}

#[test]
fn fuzzed_input_never_panics_and_stays_bounded() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = conversation();
    for _ in 0..300 {
        let mut c = Connection::new(0);
        let mut out = Vec::new();
        for (d, data) in &base {
            let mut data = data.clone();
            for _ in 0..(next() % 6) {
                let i = (next() as usize) % data.len();
                data[i] = next() as u8;
            }
            for piece in data.chunks(1 + (next() % 50) as usize) {
                c.feed(*d, piece, &mut out);
                assert!(c.dirs[0].held() + c.dirs[1].held() <= MAX_BODY + MAX_HEADER + 64);
            }
            let junk: Vec<u8> = (0..(next() % 100)).map(|_| next() as u8).collect();
            c.feed((next() % 2) as usize, &junk, &mut out);
            if next() % 3 == 0 {
                c.gap(*d, (next() % 5000) as usize, &mut out);
            }
        }
        assert!(c.pending.len() <= MAX_PENDING);
        let _ = Connection::restore(&c.snapshot()).expect("a snapshot restores");
    }
}
