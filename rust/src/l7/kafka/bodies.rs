//! The bodies read whole: what a record needs of each API's request and response
//! (Kafka's `clients/src/main/resources/common/message/<Api>{Request,Response}.json`;
//! the versions a field has are in the comments). Reading stops once the record's fields
//! are known: the rest of a body is not checked. The two bodies that carry records
//! stream instead ([`super::walk`]); SASL's authentication bytes are never read.

use super::apis::*;
use super::wire::{Cur, P};
use super::{text, Message, TopicNames};

/// Whether the body of this API and direction is read (else it is skipped).
pub fn reads(response: bool, api: i16) -> bool {
    const BOTH: &[i16] = &[
        FETCH, LIST_OFFSETS, METADATA, OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT,
        LEAVE_GROUP, SYNC_GROUP, CONSUMER_GROUP_HEARTBEAT, CREATE_TOPICS, DELETE_TOPICS, INIT_PRODUCER_ID,
    ];
    const RESPONSES: &[i16] = &[PRODUCE, API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE];
    BOTH.contains(&api) || (response && RESPONSES.contains(&api))
}

fn topic_name(c: &mut Cur, flex: bool) -> P<String> {
    Ok(text(c.string(flex)?.unwrap_or_default()))
}

/// A request's body.
pub fn request(api: i16, v: i16, c: &mut Cur, m: &mut Message, names: &TopicNames) -> P<()> {
    let flex = flexible(api, v);
    match api {
        FETCH => {
            if v <= 14 {
                c.skip(4)?; // replica id (v15+: a tagged field)
            }
            c.skip(8)?; // max wait, min bytes
            if v >= 3 {
                c.skip(4)?; // max bytes
            }
            if v >= 4 {
                c.skip(1)?; // isolation level
            }
            if v >= 7 {
                c.skip(8)?; // session id and epoch
            }
            // partitions: index, current leader epoch (v9+), fetch offset, last fetched
            // epoch (v12+), log start offset (v5+), max bytes
            let part = 4 + if v >= 9 { 4 } else { 0 } + 8 + if v >= 12 { 4 } else { 0 } + if v >= 5 { 8 } else { 0 } + 4;
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                let name = if v >= 13 { names.text(&c.uuid()?) } else { topic_name(c, flex)? };
                m.add_topic(name);
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    c.skip(part)?;
                    c.tagged(flex)?;
                    m.partitions += 1;
                }
                c.tagged(flex)?;
            }
        }
        LIST_OFFSETS => {
            c.skip(4)?; // replica id
            if v >= 2 {
                c.skip(1)?; // isolation level
            }
            // partitions: index, current leader epoch (v4+), timestamp, max offsets (v0)
            let part = 4 + if v >= 4 { 4 } else { 0 } + 8 + if v == 0 { 4 } else { 0 };
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                m.add_topic(topic_name(c, flex)?);
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    c.skip(part)?;
                    c.tagged(flex)?;
                    m.partitions += 1;
                }
                c.tagged(flex)?;
            }
        }
        METADATA => {
            // topics: null (v1+) asks for all of them
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                let id = if v >= 10 { Some(c.uuid()?) } else { None };
                match c.string(flex)? {
                    Some(name) => m.add_topic(text(name)),
                    None => m.add_topic(names.text(&id.unwrap_or_default())),
                }
                c.tagged(flex)?;
            }
        }
        OFFSET_FETCH if v >= 8 => {
            // groups [ GroupId, ... ]: the first one names the call
            let groups = c.count(flex)?.unwrap_or(0);
            if groups > 0 {
                m.group_id = Some(topic_name(c, flex)?);
            }
        }
        OFFSET_COMMIT | OFFSET_FETCH | JOIN_GROUP | HEARTBEAT | LEAVE_GROUP | SYNC_GROUP
        | CONSUMER_GROUP_HEARTBEAT => {
            m.group_id = Some(topic_name(c, flex)?); // GroupId is every one's first field
        }
        FIND_COORDINATOR => {
            // the key: a group id (key type 0) or a transactional id (1); v4+ batches keys
            if v <= 3 {
                m.group_id = Some(topic_name(c, flex)?);
            } else {
                c.skip(1)?;
                if c.count(flex)?.unwrap_or(0) > 0 {
                    m.group_id = Some(topic_name(c, flex)?);
                }
            }
        }
        CREATE_TOPICS => {
            // topics [ Name, NumPartitions, ReplicationFactor, Assignments[], Configs[] ]
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                m.add_topic(topic_name(c, flex)?);
                c.skip(6)?;
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    c.skip(4)?;
                    let n = c.count(flex)?.unwrap_or(0);
                    c.skip(4 * n)?;
                    c.tagged(flex)?;
                }
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    c.skip_string(flex)?;
                    c.skip_string(flex)?;
                    c.tagged(flex)?;
                }
                c.tagged(flex)?;
            }
        }
        DELETE_TOPICS => {
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                if v >= 6 {
                    let name = c.string(flex)?;
                    let id = c.uuid()?;
                    m.add_topic(name.map(text).unwrap_or_else(|| names.text(&id)));
                    c.tagged(flex)?;
                } else {
                    m.add_topic(topic_name(c, flex)?);
                }
            }
        }
        INIT_PRODUCER_ID => {
            m.transactional = c.string(flex)?.is_some();
        }
        _ => {}
    }
    Ok(())
}

/// A response's body.
pub fn response(api: i16, v: i16, c: &mut Cur, m: &mut Message, names: &mut TopicNames) -> P<()> {
    let flex = flexible(api, v);
    match api {
        PRODUCE => {
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                let name = if v >= 13 { names.text(&c.uuid()?) } else { topic_name(c, flex)? };
                m.add_topic(name);
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    c.skip(4)?; // index
                    m.error(c.i16()?);
                    m.partitions += 1;
                    c.skip(8)?; // base offset
                    if v >= 2 {
                        c.skip(8)?; // log append time
                    }
                    if v >= 5 {
                        c.skip(8)?; // log start offset
                    }
                    if v >= 8 {
                        for _ in 0..c.count(flex)?.unwrap_or(0) {
                            c.skip(4)?;
                            c.skip_string(flex)?;
                            c.tagged(flex)?;
                        }
                        c.skip_string(flex)?; // error message
                    }
                    c.tagged(flex)?;
                }
                c.tagged(flex)?;
            }
            if v >= 1 {
                m.throttle_ms = Some(c.i32()?);
            }
        }
        METADATA => {
            if v >= 3 {
                m.throttle_ms = Some(c.i32()?);
            }
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                c.skip(4)?; // node id
                c.skip_string(flex)?; // host
                c.skip(4)?; // port
                if v >= 1 {
                    c.skip_string(flex)?; // rack
                }
                c.tagged(flex)?;
            }
            if v >= 2 {
                c.skip_string(flex)?; // cluster id
            }
            if v >= 1 {
                c.skip(4)?; // controller id
            }
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                m.error(c.i16()?);
                let name = c.string(flex)?.map(text);
                let id = if v >= 10 { Some(c.uuid()?) } else { None };
                if let (Some(name), Some(id)) = (&name, id) {
                    names.learn(id, name.clone());
                    if m.topic_ids.len() < super::MAX_TOPIC_IDS && id != [0; 16] {
                        m.topic_ids.push((super::wire::topic_id_text(&id), name.clone()));
                    }
                }
                if let Some(name) = name {
                    m.add_topic(name);
                }
                if v >= 1 {
                    c.skip(1)?; // is internal
                }
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    m.error(c.i16()?);
                    m.partitions += 1;
                    c.skip(8)?; // index, leader
                    if v >= 7 {
                        c.skip(4)?; // leader epoch
                    }
                    let lists = if v >= 5 { 3 } else { 2 }; // replicas, ISR, offline replicas
                    for _ in 0..lists {
                        let n = c.count(flex)?.unwrap_or(0);
                        c.skip(4 * n)?;
                    }
                    c.tagged(flex)?;
                }
                if v >= 8 {
                    c.skip(4)?; // authorized operations
                }
                c.tagged(flex)?;
            }
            if (8..=10).contains(&v) {
                c.skip(4)?; // cluster authorized operations
            }
            if v >= 13 {
                m.error(c.i16()?);
            }
        }
        LIST_OFFSETS => {
            if v >= 2 {
                m.throttle_ms = Some(c.i32()?);
            }
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                m.add_topic(topic_name(c, flex)?);
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    c.skip(4)?;
                    m.error(c.i16()?);
                    m.partitions += 1;
                    if v == 0 {
                        let n = c.count(flex)?.unwrap_or(0);
                        c.skip(8 * n)?;
                    } else {
                        c.skip(16)?; // timestamp, offset
                        if v >= 4 {
                            c.skip(4)?; // leader epoch
                        }
                    }
                    c.tagged(flex)?;
                }
                c.tagged(flex)?;
            }
        }
        OFFSET_COMMIT => {
            if v >= 3 {
                m.throttle_ms = Some(c.i32()?);
            }
            for _ in 0..c.count(flex)?.unwrap_or(0) {
                let name = if v >= 10 { names.text(&c.uuid()?) } else { topic_name(c, flex)? };
                m.add_topic(name);
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    c.skip(4)?;
                    m.error(c.i16()?);
                    m.partitions += 1;
                    c.tagged(flex)?;
                }
                c.tagged(flex)?;
            }
        }
        OFFSET_FETCH => {
            if v >= 3 {
                m.throttle_ms = Some(c.i32()?);
            }
            let groups = if v >= 8 { c.count(flex)?.unwrap_or(0) } else { 1 };
            for _ in 0..groups {
                if v >= 8 {
                    let g = topic_name(c, flex)?;
                    m.group_id.get_or_insert(g);
                }
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    let name = if v >= 10 { names.text(&c.uuid()?) } else { topic_name(c, flex)? };
                    m.add_topic(name);
                    for _ in 0..c.count(flex)?.unwrap_or(0) {
                        c.skip(12)?; // index, committed offset
                        if v >= 5 {
                            c.skip(4)?; // committed leader epoch
                        }
                        c.skip_string(flex)?; // metadata
                        m.error(c.i16()?);
                        m.partitions += 1;
                        c.tagged(flex)?;
                    }
                    c.tagged(flex)?;
                }
                if v >= 2 {
                    m.error(c.i16()?);
                }
                if v >= 8 {
                    c.tagged(flex)?;
                }
            }
        }
        FIND_COORDINATOR => {
            if v >= 1 {
                m.throttle_ms = Some(c.i32()?);
            }
            if v <= 3 {
                m.error(c.i16()?);
            } else {
                for _ in 0..c.count(flex)?.unwrap_or(0) {
                    c.skip_string(flex)?; // key
                    c.skip(4)?; // node id
                    c.skip_string(flex)?; // host
                    c.skip(4)?; // port
                    m.error(c.i16()?);
                    c.skip_string(flex)?;
                    c.tagged(flex)?;
                }
            }
        }
        // throttle time (from the version given), then the error code
        JOIN_GROUP | HEARTBEAT | LEAVE_GROUP | SYNC_GROUP | CONSUMER_GROUP_HEARTBEAT | INIT_PRODUCER_ID => {
            let throttled_from = match api {
                JOIN_GROUP => 2,
                HEARTBEAT | LEAVE_GROUP | SYNC_GROUP => 1,
                _ => 0,
            };
            if v >= throttled_from {
                m.throttle_ms = Some(c.i32()?);
            }
            m.error(c.i16()?);
        }
        API_VERSIONS | SASL_HANDSHAKE | SASL_AUTHENTICATE => m.error(c.i16()?),
        CREATE_TOPICS | DELETE_TOPICS => {
            if v >= if api == CREATE_TOPICS { 2 } else { 1 } {
                m.throttle_ms = Some(c.i32()?);
            }
            // the first topic's result: its name (and id) and error code
            if c.count(flex)?.unwrap_or(0) > 0 {
                let name = c.string(flex)?.map(text);
                let id = if (api == CREATE_TOPICS && v >= 7) || (api == DELETE_TOPICS && v >= 6) {
                    Some(c.uuid()?)
                } else {
                    None
                };
                m.add_topic(name.unwrap_or_else(|| names.text(&id.unwrap_or_default())));
                m.error(c.i16()?);
            }
        }
        _ => {}
    }
    Ok(())
}
