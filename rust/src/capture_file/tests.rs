//! The readers on files built here: formats, timestamps, every damage counter, garbage.

use super::*;
use std::io::Write;
use std::sync::atomic::AtomicUsize;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A temporary file holding `bytes`, removed when dropped.
struct Temp(std::path::PathBuf);

impl Temp {
    fn new(bytes: &[u8]) -> Temp {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wirestream-core-test-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Temp(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

type Rec = (i64, Vec<u8>);

fn frames(n: usize) -> Vec<Rec> {
    (0..n).map(|i| (1_700_000_000_123_456_789 + i as i64 * 1_000_001, vec![i as u8; 20 + i])).collect()
}

fn pcap(recs: &[Rec], ns: bool, big: bool, linktype: u32) -> Vec<u8> {
    let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
    let w16 = |v: u16| if big { v.to_be_bytes() } else { v.to_le_bytes() };
    let mut out = Vec::new();
    out.extend_from_slice(&w32(if ns { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
    out.extend_from_slice(&w16(2));
    out.extend_from_slice(&w16(4));
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&w32(65535));
    out.extend_from_slice(&w32(linktype));
    for (ts_ns, data) in recs {
        let frac = if ns { ts_ns % 1_000_000_000 } else { ts_ns % 1_000_000_000 / 1000 };
        for v in [(ts_ns / 1_000_000_000) as u32, frac as u32, data.len() as u32, data.len() as u32 + 4] {
            out.extend_from_slice(&w32(v));
        }
        out.extend_from_slice(data);
    }
    out
}

fn block(btype: u32, body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
    let len = (12 + body.len()) as u32;
    let mut out = btype.to_le_bytes().to_vec();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&len.to_le_bytes());
    out
}

fn shb() -> Vec<u8> {
    let mut body = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    body.extend_from_slice(&[1, 0, 0, 0]);
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    block(0x0a0d_0d0a, &body)
}

fn idb(linktype: u16, tsresol: Option<u8>, tsoffset: i64) -> Vec<u8> {
    let mut body = linktype.to_le_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    if let Some(r) = tsresol {
        body.extend_from_slice(&[9, 0, 1, 0, r, 0, 0, 0]);
    }
    if tsoffset != 0 {
        body.extend_from_slice(&[14, 0, 8, 0]);
        body.extend_from_slice(&tsoffset.to_le_bytes());
    }
    body.extend_from_slice(&[0, 0, 0, 0]);
    block(1, &body)
}

fn epb(iface: u32, ts: u64, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for v in [iface, (ts >> 32) as u32, ts as u32, data.len() as u32, data.len() as u32] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(data);
    block(6, &body)
}

/// (number, ts_us, linktype, data) of a frame
type Got = (u64, i64, i64, Vec<u8>);

fn read_all(bytes: &[u8], chunk: usize) -> (Vec<Got>, Vec<(&'static str, u64)>, CaptureFile) {
    let t = Temp::new(bytes);
    let mut f = CaptureFile::open(t.path(), chunk).unwrap();
    let mut out = Vec::new();
    while let Some(fr) = f.next_frame() {
        out.push((fr.number, fr.ts_us, fr.linktype, fr.data.to_vec()));
    }
    (out, f.problems(), f)
}

fn open_err(bytes: &[u8]) -> String {
    let t = Temp::new(bytes);
    CaptureFile::open(t.path(), DEFAULT_CHUNK).err().map(|e| e.0).unwrap_or_default()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn pcap_in_every_magic_and_chunk_size() {
    let recs = frames(6);
    for (ns, big) in [(false, false), (false, true), (true, false), (true, true)] {
        for chunk in [7, 64, DEFAULT_CHUNK] {
            let (got, problems, f) = read_all(&pcap(&recs, ns, big, 1), chunk);
            assert!(problems.is_empty());
            assert_eq!(f.format, "pcap");
            assert_eq!(got.len(), 6);
            for (i, (number, ts_us, linktype, data)) in got.iter().enumerate() {
                assert_eq!((*number, *ts_us, *linktype), (i as u64 + 1, recs[i].0 / 1000, 1));
                assert_eq!(data, &recs[i].1);
            }
        }
    }
}

#[test]
fn pcap_damage_is_counted() {
    let data = pcap(&frames(3), false, false, 1);
    for cut in [1, 10, 25] {
        let (got, problems, _) = read_all(&data[..data.len() - cut], 16);
        assert_eq!(got.len(), 2);
        assert_eq!(problems, vec![("truncated_record", 1)]);
    }
    let mut huge = data.clone();
    let second = 24 + 16 + 20;
    huge[second + 8..second + 12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let (got, problems, _) = read_all(&huge, DEFAULT_CHUNK);
    assert_eq!(got.len(), 1);
    assert_eq!(problems, vec![("corrupt_record_header", 1)]);
}

#[test]
fn pcapng_interfaces_resolutions_and_offsets() {
    let data: Vec<u8> = [
        shb(),
        idb(1, None, 0),
        idb(101, Some(9), 0),
        idb(113, Some(0x80 | 10), 100),
        epb(0, 1_000_000, b"a"),
        epb(1, 1_000_000_000, b"bb"),
        epb(2, 2048, b"ccc"),
        block(5, &[0; 8]), // an interface statistics block: skipped
        block(3, &[3, 0, 0, 0, b'd', b'd', b'd']),
    ]
    .concat();
    for chunk in [5, DEFAULT_CHUNK] {
        let (got, problems, f) = read_all(&data, chunk);
        assert!(problems.is_empty());
        let seen: Vec<(u64, i64, i64)> = got.iter().map(|g| (g.0, g.1, g.2)).collect();
        assert_eq!(seen, vec![(1, 1_000_000, 1), (2, 1_000_000, 101), (3, 2_000_000 + 100_000_000, 113), (4, 0, 1)]);
        assert_eq!(got[3].3, b"ddd");
        assert_eq!(f.linktypes.iter().copied().collect::<Vec<_>>(), vec![1, 101, 113]);
    }
}

#[test]
fn pcapng_damage_is_counted() {
    let good = [shb(), idb(1, None, 0), epb(0, 1, b"a"), epb(0, 2, b"b")].concat();
    let (got, problems, _) = read_all(&good[..good.len() - 3], DEFAULT_CHUNK);
    assert_eq!((got.len(), problems), (1, vec![("truncated_block", 1)]));
    let unknown = [shb(), idb(1, None, 0), epb(3, 1, b"a"), epb(0, 2, b"b")].concat();
    let (got, problems, _) = read_all(&unknown, DEFAULT_CHUNK);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2]);
    assert_eq!(problems, vec![("corrupt_packet_block", 1)]);
    for bad_len in [7u32, 8, 16, 0xffff_fff0] {
        let mut b = good.clone();
        let third = shb().len() + idb(1, None, 0).len() + epb(0, 1, b"a").len();
        b[third + 4..third + 8].copy_from_slice(&bad_len.to_le_bytes());
        let (got, problems, _) = read_all(&b, DEFAULT_CHUNK);
        assert_eq!((got.len(), problems), (1, vec![("corrupt_block_length", 1)]));
    }
    let mut bom = good.clone();
    let second_section = [good.clone(), shb()].concat();
    bom.extend_from_slice(&second_section[good.len()..]);
    let at = good.len() + 8;
    bom[at..at + 4].copy_from_slice(&[1, 2, 3, 4]);
    let (got, problems, _) = read_all(&bom, DEFAULT_CHUNK);
    assert_eq!((got.len(), problems), (2, vec![("corrupt_section_header", 1)]));
}

#[test]
fn gzip_whole_and_cut() {
    let recs: Vec<Rec> = (0..40).map(|i| (i, (0..1400).map(|j| ((i * 7 + j * 13) % 251) as u8).collect())).collect();
    let plain = pcap(&recs, false, false, 1);
    let gz = gzip(&plain);
    let (got, problems, f) = read_all(&gz, DEFAULT_CHUNK);
    assert_eq!((got.len(), problems.len(), f.format.as_str()), (40, 0, "pcap+gzip"));
    let (got, problems, _) = read_all(&gz[..gz.len() - 8], DEFAULT_CHUNK);
    assert_eq!((got.len(), problems), (40, vec![("truncated_gzip", 1)]));
    let (got, problems, _) = read_all(&gz[..gz.len() / 2], 4096);
    assert!(got.len() < 40);
    assert!(problems.contains(&("truncated_gzip", 1)));
    assert!(open_err(&gz[..12]).starts_with("damaged gzip data"));
}

#[test]
fn files_that_cannot_be_read() {
    assert_eq!(open_err(b""), "empty file");
    assert!(open_err(b"GET / HTTP/1.1\r\n\r\n").starts_with("not a pcap or pcapng"));
    assert_eq!(open_err(&pcap(&[], false, false, 1)[..23]), "truncated pcap file header");
    assert!(open_err(&pcap(&[], false, false, 147)).starts_with("unsupported link type 147 (supported: 0 BSD"));
    let mut bad_bom = shb();
    bad_bom[8] = 0;
    assert_eq!(open_err(&bad_bom), "not a valid pcapng section header");
    assert_eq!(CaptureFile::open("/nonexistent/x.pcap", 64).err().unwrap().0, "no such file");
    let dir = std::env::temp_dir();
    assert_eq!(CaptureFile::open(dir.to_str().unwrap(), 64).err().unwrap().0, "is a directory, not a capture file");
}

#[test]
fn garbage_after_a_valid_header_never_panics() {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut rng = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let heads = [pcap(&[], false, false, 1), [shb(), idb(1, Some(9), 5)].concat()];
    for i in 0..300 {
        let mut data = heads[i % 2].clone();
        let good = if i % 2 == 0 { pcap(&frames(4), false, false, 1)[24..].to_vec() } else { epb(0, 9, b"xyz").repeat(3) };
        data.extend_from_slice(&good);
        let n = data.len();
        for _ in 0..1 + rng() % 8 {
            let at = heads[i % 2].len() + (rng() as usize) % (n - heads[i % 2].len());
            data[at] = rng() as u8;
        }
        data.truncate(n - (rng() as usize) % 16);
        let t = Temp::new(&data);
        let mut f = CaptureFile::open(t.path(), 1 + (rng() % 64) as usize).unwrap();
        let mut count = 0;
        while f.next_frame().is_some() {
            count += 1;
        }
        assert!(count <= 12);
    }
}
