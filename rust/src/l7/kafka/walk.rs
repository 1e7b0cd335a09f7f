//! The two bodies that carry records, read as they stream: a Produce request and a Fetch
//! response. They can be megabytes (a fetch answers with up to `fetch.max.bytes`, 50 MB
//! by default), nearly all of it record sets: their structure (topics, partitions, error
//! codes) is read element by element from a small buffer, and each record set is handed
//! to a [`RecordScan`](super::records::RecordScan) that reads its batches' headers and
//! skips the rest, so memory stays bounded whatever the size.
//!
//! Layouts (Kafka's `ProduceRequest.json`, `FetchResponse.json`):
//! - Produce request: `TransactionalId` nullable string (v3+), `Acks` int16, `TimeoutMs`
//!   int32, topics [ `Name` string (v0–12) | `TopicId` uuid (v13+), partitions [ `Index`
//!   int32, `Records` records ] ].
//! - Fetch response: `ThrottleTimeMs` int32 (v1+), `ErrorCode` int16 and `SessionId`
//!   int32 (v7+), topics [ `Topic` string (v0–12) | `TopicId` uuid (v13+), partitions [
//!   `PartitionIndex` int32, `ErrorCode` int16, `HighWatermark` int64,
//!   `LastStableOffset` int64 (v4+), `LogStartOffset` int64 (v5+),
//!   `AbortedTransactions` nullable [ `ProducerId` int64, `FirstOffset` int64 ] (v4+),
//!   `PreferredReadReplica` int32 (v11+), `Records` records ] ].
//!
//! In flexible versions every struct ends with tagged fields (Fetch's partitions carry
//! `DivergingEpoch`, `CurrentLeader`, `SnapshotId` there; its response `NodeEndpoints`):
//! skipped.

use super::apis::{FETCH, PRODUCE};
use super::wire::{Cur, Short, P};
use super::{Message, TopicNames};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Prefix,
    TopicHead,
    PartHead,
    PartTail,
    TopicTail,
    End,
    Done,
}

/// Where the reading of a streamed body is.
#[derive(Clone, Debug)]
pub struct Walk {
    pub api: i16,
    pub version: i16,
    pub flex: bool,
    pub stage: Stage,
    pub topics_left: usize,
    pub parts_left: usize,
}

/// Whether a message of this API and direction is read as a stream.
pub fn streamed(response: bool, api: i16) -> bool {
    (api == PRODUCE && !response) || (api == FETCH && response)
}

impl Walk {
    pub fn new(api: i16, version: i16, flex: bool) -> Self {
        Walk { api, version, flex, stage: Stage::Prefix, topics_left: 0, parts_left: 0 }
    }

    /// Reads the next element from `c`; `Ok(Some(n))` when a record set of `n` bytes
    /// starts after it. An element is read whole or not at all: on `Need` the cursor is
    /// where it was and `msg` unchanged.
    pub fn step(&mut self, c: &mut Cur, msg: &mut Message, names: &TopicNames) -> P<Option<usize>> {
        let start = c.p;
        let r = self.element(c, msg, names);
        if r == Err(Short::Need) {
            c.p = start;
        }
        r
    }

    fn element(&mut self, c: &mut Cur, msg: &mut Message, names: &TopicNames) -> P<Option<usize>> {
        let (v, flex) = (self.version, self.flex);
        match self.stage {
            Stage::Prefix => {
                let topics = if self.api == PRODUCE {
                    let txn = if v >= 3 { c.string(flex)?.is_some() } else { false };
                    let acks = c.i16()?;
                    c.skip(4)?; // timeout
                    let n = c.count(flex)?.unwrap_or(0);
                    msg.acks = Some(acks);
                    msg.transactional = txn;
                    n
                } else {
                    let throttle = if v >= 1 { Some(c.i32()?) } else { None };
                    let error = if v >= 7 {
                        let e = c.i16()?;
                        c.skip(4)?; // session id
                        e
                    } else {
                        0
                    };
                    let n = c.count(flex)?.unwrap_or(0);
                    msg.throttle_ms = throttle;
                    msg.error(error);
                    n
                };
                self.topics_left = topics;
                msg.records = Some(0);
                msg.record_bytes = Some(0);
                self.stage = if topics > 0 { Stage::TopicHead } else { Stage::End };
            }
            Stage::TopicHead => {
                let name = if v >= 13 {
                    names.text(&c.uuid()?)
                } else {
                    String::from_utf8_lossy(c.string(flex)?.unwrap_or_default()).into_owned()
                };
                let n = c.count(flex)?.unwrap_or(0);
                msg.add_topic(name);
                self.parts_left = n;
                self.stage = if n > 0 { Stage::PartHead } else { Stage::TopicTail };
            }
            Stage::PartHead => {
                let mut error = 0;
                if self.api == PRODUCE {
                    c.skip(4)?; // index
                } else {
                    c.skip(4)?; // partition index
                    error = c.i16()?;
                    c.skip(8)?; // high watermark
                    if v >= 4 {
                        c.skip(8)?; // last stable offset
                    }
                    if v >= 5 {
                        c.skip(8)?; // log start offset
                    }
                    if v >= 4 {
                        if let Some(n) = c.count(flex)? {
                            for _ in 0..n {
                                c.skip(16)?;
                                c.tagged(flex)?;
                            }
                        }
                    }
                    if v >= 11 {
                        c.skip(4)?; // preferred read replica
                    }
                }
                let records = c.bytes_len(flex)?;
                msg.partitions += 1;
                msg.error(error);
                self.stage = Stage::PartTail;
                if let Some(n) = records {
                    return Ok(Some(n));
                }
            }
            Stage::PartTail => {
                c.tagged(flex)?;
                self.parts_left -= 1;
                self.stage = if self.parts_left > 0 { Stage::PartHead } else { Stage::TopicTail };
            }
            Stage::TopicTail => {
                c.tagged(flex)?;
                self.topics_left -= 1;
                self.stage = if self.topics_left > 0 { Stage::TopicHead } else { Stage::End };
            }
            Stage::End => {
                c.tagged(flex)?;
                self.stage = Stage::Done;
            }
            Stage::Done => {}
        }
        Ok(None)
    }
}
