//! The producer's per-packet loop: read a frame, decode it, batch it.
//!
//! It runs here, not in Python: Python takes the complete batches and publishes them
//! (`producers/pcap_replay.py`), so no Python code runs per packet on the replay path.

use crate::batch::Batcher;
use crate::capture_file::CaptureFile;
use crate::decode::Decoder;

/// What a replay has read so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// frames read (packet blocks that could not be used are not frames)
    pub frames: u64,
    pub first_ts_us: Option<i64>,
    pub last_ts_us: Option<i64>,
}

/// Read, decode and batch up to `max_frames` frames; true when the file is done.
/// Complete batches wait in `batcher.ready`.
pub fn pump(
    file: &mut CaptureFile,
    decoder: &mut Decoder,
    batcher: &mut Batcher,
    stats: &mut ReplayStats,
    max_frames: u64,
) -> bool {
    for _ in 0..max_frames {
        let Some(frame) = file.next_frame() else { return true };
        stats.frames += 1;
        stats.first_ts_us.get_or_insert(frame.ts_us);
        stats.last_ts_us = Some(frame.ts_us);
        if let Some((packet, payload)) = decoder.decode(&frame) {
            batcher.add(&packet, &payload, decoder.path());
        }
    }
    false
}
