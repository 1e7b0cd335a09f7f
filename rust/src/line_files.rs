//! JSON lines files written by a thread of their own: `analyze --out`'s
//! `DIR/<topic>.jsonl` (`sinks/jsonl.py`'s `JsonlWriter`).
//!
//! Why a thread: making a record's JSON line from its Avro body (`crate::avro_json`) is
//! most of what `analyze`'s own process does for a capture with big bodies (the JSON
//! text of 64 KiB random bodies: ~6 ns a byte, 2.4x the bytes out), and that process is
//! the run's bottleneck: it also feeds the workers their packets and decodes their
//! records, under one GIL, while the workers wait on its pipes. Here the lines are made
//! and written by a thread that never touches a Python object, beside the process's
//! Python thread.
//!
//! Each job carries its own bytes (a copy of the message: the Python object cannot be
//! read without the GIL), so the queue is bounded ([`QUEUE_BATCHES`]): a writer that
//! falls behind makes the sender wait, and what is queued stays a few megabytes. One
//! queue for every file keeps each file's lines in the order they were sent.
//!
//! Jobs cross to the thread in batches ([`BATCH_JOBS`], [`BATCH_BYTES`]), not one by
//! one: handing over a job woke the thread each time (a futex call on each side), ~2 us
//! of the sender's CPU per record, as much as making a connection's line. The lines of a
//! batch still being filled reach their files at [`LineFiles::close`] at the latest,
//! which is when the files are read (their lines sit in a 1 MiB write buffer anyway).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::avro_json::json_line;
use crate::avro_read::{ReadError, Reader};

/// Jobs handed to the thread at once, at most.
pub const BATCH_JOBS: usize = 32;
/// A batch's bytes that make it ready before it has [`BATCH_JOBS`] jobs (a job is a
/// record's bytes: up to ~130 KiB for a transaction with two capped bodies).
pub const BATCH_BYTES: usize = 1 << 20;
/// Batches queued at most: with the one being filled and the one being written, what is
/// held is at most ~4 batches (~4 MiB, or 128 jobs).
pub const QUEUE_BATCHES: usize = 2;
/// Each file's write buffer.
const FILE_BUFFER: usize = 1 << 20;

/// What to append to a file.
pub enum Job {
    /// The JSON line of the Avro body at `data[offset..]`, read with `reader`.
    Avro { file: usize, reader: Arc<Reader>, data: Vec<u8>, offset: usize },
    /// A line made by the caller (newline included).
    Line { file: usize, line: Vec<u8> },
}

impl Job {
    /// The bytes it holds.
    fn size(&self) -> usize {
        match self {
            Job::Avro { data, .. } => data.len(),
            Job::Line { line, .. } => line.len(),
        }
    }
}

/// Jobs handed to the thread together, in order.
pub type Batch = Vec<Job>;

/// What the thread did, when it is done.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Lines written to each file.
    pub lines: Vec<u64>,
    /// Avro bodies that did not decode (no line written for them), and the first's error.
    pub malformed: u64,
    pub first_malformed: Option<String>,
    /// The first write that failed (nothing is written after it).
    pub io_error: Option<String>,
}

/// The files and the thread that writes them.
pub struct LineFiles {
    sender: Option<SyncSender<Batch>>,
    thread: Option<JoinHandle<Outcome>>,
    /// the jobs not handed over yet, and their bytes
    batch: Batch,
    batch_bytes: usize,
}

impl LineFiles {
    /// Create (truncate) `paths` and start the thread. An error names the file that
    /// could not be created.
    pub fn create(paths: &[PathBuf]) -> Result<LineFiles, String> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            files.push(BufWriter::with_capacity(FILE_BUFFER, file));
        }
        let (sender, receiver) = sync_channel(QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("jsonl-writer".into())
            .spawn(move || write_all(files, receiver))
            .map_err(|e| format!("cannot start the JSON lines thread: {e}"))?;
        Ok(LineFiles { sender: Some(sender), thread: Some(thread), batch: Vec::with_capacity(BATCH_JOBS), batch_bytes: 0 })
    }

    /// Whether [`LineFiles::close`] was called (a job pushed then is dropped).
    pub fn is_closed(&self) -> bool {
        self.sender.is_none()
    }

    /// Add `job` to the batch being filled; when that made it ready, the batch and the
    /// queue's sending end, for the caller to hand it over in the order the batches were
    /// made (waiting without holding a lock on these files). None once closed.
    pub fn push(&mut self, job: Job) -> Option<(SyncSender<Batch>, Batch)> {
        if self.is_closed() {
            return None;
        }
        self.batch_bytes += job.size();
        self.batch.push(job);
        if self.batch.len() < BATCH_JOBS && self.batch_bytes < BATCH_BYTES {
            return None;
        }
        self.batch_bytes = 0;
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_JOBS));
        self.sender.clone().map(|sender| (sender, batch)) // (cloned once a batch, not a job)
    }

    /// Queue `job`, waiting for room when its batch is handed over.
    pub fn send(&mut self, job: Job) -> Result<(), String> {
        if self.is_closed() {
            return Err("the JSON lines files are closed".into());
        }
        match self.push(job) {
            Some((sender, batch)) => sender.send(batch).map_err(|_| "the JSON lines thread has stopped".to_string()),
            None => Ok(()),
        }
    }

    /// Write what is queued, flush and close the files, stop the thread; what it did.
    /// Only the first call has something to tell (later ones: the default outcome).
    pub fn close(&mut self) -> Outcome {
        if let Some(sender) = self.sender.take() {
            let batch = std::mem::take(&mut self.batch);
            if !batch.is_empty() {
                // (a thread that has stopped says why through its outcome, below)
                let _ = sender.send(batch);
            }
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => Outcome { io_error: Some("the JSON lines thread panicked".into()), ..Outcome::default() },
            None => Outcome::default(),
        }
    }
}

impl Drop for LineFiles {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_all(mut files: Vec<BufWriter<File>>, batches: Receiver<Batch>) -> Outcome {
    let mut out = Outcome { lines: vec![0; files.len()], ..Outcome::default() };
    let mut append = |out: &mut Outcome, file: usize, line: &[u8]| {
        if out.io_error.is_some() {
            return;
        }
        let Some(f) = files.get_mut(file) else {
            out.io_error = Some(format!("no file numbered {file}"));
            return;
        };
        match f.write_all(line) {
            Ok(()) => {
                if let Some(n) = out.lines.get_mut(file) {
                    *n += 1;
                }
            }
            Err(e) => out.io_error = Some(e.to_string()),
        }
    };
    let mut text = Vec::new(); // one line's text, the buffer kept from line to line
    for job in batches.into_iter().flatten() {
        match job {
            Job::Line { file, line } => append(&mut out, file, &line),
            Job::Avro { file, reader, data, offset } => match json_line(&reader, &data, offset, &mut text) {
                Ok(line) => append(&mut out, file, line),
                Err(e) => {
                    out.malformed += 1;
                    if out.first_malformed.is_none() {
                        let e = match e {
                            ReadError::Malformed { .. } => e.to_string(),
                            ReadError::Source(never) => match never {},
                        };
                        out.first_malformed = Some(format!("{}: {e}", reader.schema().name()));
                    }
                }
            },
        }
    }
    if out.io_error.is_none() {
        for f in &mut files {
            if let Err(e) = f.flush() {
                out.io_error = Some(e.to_string());
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "long"}, {"name": "b", "type": ["null", "bytes"], "default": null}]}"#;

    fn reader() -> Arc<Reader> {
        Arc::new(Reader::from_json(SCHEMA, None).expect("schema"))
    }

    #[test]
    fn lines_in_order_per_file_and_malformed_bodies_counted() {
        let dir = std::env::temp_dir().join(format!("line-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let paths = [dir.join("a.jsonl"), dir.join("b.jsonl")];
        let mut files = LineFiles::create(&paths).expect("create");
        let r = reader();
        for i in 0..500u16 {
            // a = i (zigzag varint), b = bytes of one byte i (union branch 1)
            let mut data = vec![9, 9]; // two bytes before the body: offset 2
            let z = u64::from(i) << 1;
            if z < 0x80 { data.push(z as u8) } else { data.extend([(z as u8 & 0x7f) | 0x80, (z >> 7) as u8]) }
            data.extend([2, 2, (i % 256) as u8]);
            files.send(Job::Avro { file: usize::from(i % 2), reader: r.clone(), data, offset: 2 }).expect("send");
            if i % 50 == 0 {
                files.send(Job::Line { file: 1, line: format!("made {i}\n").into_bytes() }).expect("send");
            }
        }
        // truncated: the union's branch is missing
        files.send(Job::Avro { file: 0, reader: r.clone(), data: vec![4], offset: 0 }).expect("send");
        let out = files.close();
        assert_eq!(out.lines, vec![250, 260]);
        assert_eq!(out.malformed, 1);
        assert!(out.first_malformed.as_deref().is_some_and(|e| e.starts_with("R: ")), "{out:?}");
        assert_eq!(out.io_error, None);
        let a = std::fs::read_to_string(&paths[0]).expect("a");
        let b = std::fs::read_to_string(&paths[1]).expect("b");
        let a_lines: Vec<&str> = a.lines().collect();
        assert_eq!(a_lines.len(), 250);
        assert_eq!(a_lines[0], r#"{"a":0,"b":"\u0000"}"#);
        assert_eq!(a_lines[1], r#"{"a":2,"b":"\u0002"}"#);
        let b_lines: Vec<&str> = b.lines().collect();
        assert_eq!(b_lines[0], "made 0");
        assert_eq!(b_lines[1], r#"{"a":1,"b":"\u0001"}"#);
        assert_eq!(b_lines[26], "made 50");
        assert_eq!(files.close(), Outcome::default());
        assert!(files.is_closed() && files.send(Job::Line { file: 0, line: vec![] }).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn jobs_are_handed_over_in_batches_by_count_or_bytes() {
        let dir = std::env::temp_dir().join(format!("line-batches-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.jsonl");
        let mut files = LineFiles::create(std::slice::from_ref(&path)).expect("create");
        let line = |n: usize| Job::Line { file: 0, line: vec![b'x'; n] };
        for _ in 1..BATCH_JOBS {
            assert!(files.push(line(2)).is_none());
        }
        assert_eq!(files.push(line(2)).map(|(_, b)| b.len()), Some(BATCH_JOBS));
        assert!(files.push(line(BATCH_BYTES - 1)).is_none());
        assert_eq!(files.push(line(1)).map(|(_, b)| b.len()), Some(2)); // ready by its bytes
        files.send(line(1)).expect("send"); // held, written at close
        assert_eq!(files.close().lines, vec![1]);
        assert_eq!(std::fs::read(&path).expect("a"), b"x");
        assert!(files.push(line(1)).is_none()); // closed: nothing to hand over
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_file_that_cannot_be_created_is_named() {
        let err = LineFiles::create(&[PathBuf::from("/nonexistent-dir/x.jsonl")]).err().expect("error");
        assert!(err.starts_with("/nonexistent-dir/x.jsonl: "), "{err}");
    }
}
