//! A record set (a Produce request's or a Fetch response's `records` field) scanned as
//! its bytes come: each batch's header is read, its records are skipped, never kept.
//!
//! Since Kafka 0.11 a record set is a sequence of *record batches* (magic 2,
//! https://kafka.apache.org/documentation/#recordbatch): baseOffset int64, batchLength
//! int32 (the bytes after this field), partitionLeaderEpoch int32, magic int8, crc
//! uint32, attributes int16 (bits 0–2 the compression codec, bit 5 a control batch),
//! lastOffsetDelta int32, two timestamps int64, producerId int64, producerEpoch int16,
//! baseSequence int32, then the record count int32 at byte 57, then the records
//! (compressed as a whole when the codec says so): the count is read without
//! decompressing. Older message sets (magic 0 and 1: offset int64, size int32, crc,
//! magic at byte 16) count one record per message; a compressed one is a wrapper whose
//! inner messages are not counted (Kafka 4 accepts neither from producers).
//!
//! Quirks: a Fetch response may end with a *partial* batch (the broker cuts the set at
//! the fetch's size limit, and the client fetches it again): it is counted in
//! [`RecordScan::partial`], not in the records, as the client will see it next time.
//! Control batches (transaction markers) are counted apart from the data records.

/// Bytes of a batch's header up to and with its record count.
const BATCH_HEAD: usize = 61;
/// Bytes of a legacy message's header up to its magic and attributes.
const LEGACY_HEAD: usize = 18;

/// The scan of one record set.
#[derive(Clone, Debug, Default)]
pub struct RecordScan {
    /// Bytes of the set not yet seen.
    pub left: usize,
    head: Vec<u8>,
    skip: usize,
    /// Data records of the complete batches (legacy messages: one each).
    pub records: u64,
    pub batches: u32,
    /// Records of control batches (transaction commit/abort markers).
    pub control_records: u64,
    /// Batches cut short by the end of the set (a fetch's size limit).
    pub partial: u32,
    /// The first batch's compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub compression: Option<u8>,
    /// The set is not a sequence of batches: its rest was skipped uncounted.
    pub bad: bool,
}

impl RecordScan {
    pub fn new(len: usize) -> Self {
        RecordScan { left: len, ..Default::default() }
    }

    /// The header bytes held and the bytes still to skip (the checkpoint).
    pub fn state(&self) -> (&[u8], usize) {
        (&self.head, self.skip)
    }

    pub fn restored(left: usize, head: Vec<u8>, skip: usize) -> Self {
        RecordScan { left, head, skip, ..Default::default() }
    }

    /// Takes the set's next bytes (at most [`RecordScan::left`] of `data`); returns how
    /// many it took.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() && self.left > 0 {
            let avail = (data.len() - used).min(self.left);
            if self.skip > 0 || self.bad {
                let k = if self.bad { avail } else { avail.min(self.skip) };
                if !self.bad {
                    self.skip -= k;
                }
                used += k;
                self.left -= k;
                continue;
            }
            // the header of the next batch: 18 bytes tell the magic, a v2 batch needs 61
            let want = if self.head.len() >= 17 && self.head[16] < 2 { LEGACY_HEAD } else { BATCH_HEAD };
            let k = avail.min(want - self.head.len());
            self.head.extend_from_slice(&data[used..used + k]);
            used += k;
            self.left -= k;
            let want = if self.head.len() >= 17 && self.head[16] < 2 { LEGACY_HEAD } else { BATCH_HEAD };
            if self.head.len() < want {
                if self.left == 0 {
                    self.partial += 1; // the set ends inside a batch's header
                    self.head.clear();
                }
                continue;
            }
            self.batch();
        }
        used
    }

    /// A batch's header is in `head`: count it and skip its body.
    fn batch(&mut self) {
        let h = &self.head;
        let length = i32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let magic = h[16];
        let min = if magic >= 2 { BATCH_HEAD - 12 } else { LEGACY_HEAD - 12 };
        if magic > 2 || length < min as i32 {
            self.bad = true; // not a batch: the rest of the set is skipped uncounted
            self.head.clear();
            return;
        }
        let body = 12 + length as usize - h.len();
        if body > self.left {
            self.partial += 1; // cut by the fetch's size limit: the client fetches it again
        } else if magic == 2 {
            let attributes = u16::from_be_bytes([h[21], h[22]]);
            let count = i32::from_be_bytes([h[57], h[58], h[59], h[60]]).max(0) as u64;
            if attributes & 0x20 != 0 {
                self.control_records += count;
            } else {
                self.records += count;
            }
            self.batches += 1;
            self.compression.get_or_insert((attributes & 7) as u8);
        } else {
            self.records += 1;
            self.batches += 1;
            self.compression.get_or_insert(h[17] & 7);
        }
        self.skip = body;
        self.head.clear();
    }
}

/// A compression codec's name.
pub fn compression_name(codec: u8) -> &'static str {
    match codec {
        0 => "none",
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "unknown",
    }
}
