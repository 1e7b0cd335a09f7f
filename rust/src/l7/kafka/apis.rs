//! Kafka's API keys: each one's name and first flexible version.
//!
//! From Apache Kafka 4.4's message definitions (`clients/src/main/resources/common/message/
//! *.json`: `apiKey`, `flexibleVersions`). The first flexible version decides the
//! headers' versions: a request's header is v2 (tagged fields after the client id) from
//! it on, else v1; a response's header v1 (tagged fields after the correlation id), else
//! v0 — except ApiVersions' response, whose header is always v0 (a client must read it
//! before it knows what the broker speaks).

/// (api key, name, first flexible version (`u16::MAX`: never flexible), highest version
/// Kafka 4.4 speaks (for the keys it no longer has, 4–7, Kafka 3.9's))
const APIS: &[(i16, &str, u16, i16)] = &[
    (0, "Produce", 9, 13),
    (1, "Fetch", 12, 18),
    (2, "ListOffsets", 6, 11),
    (3, "Metadata", 9, 13),
    (4, "LeaderAndIsr", 4, 7),
    (5, "StopReplica", 2, 4),
    (6, "UpdateMetadata", 6, 8),
    (7, "ControlledShutdown", 3, 3),
    (8, "OffsetCommit", 8, 10),
    (9, "OffsetFetch", 6, 10),
    (10, "FindCoordinator", 3, 6),
    (11, "JoinGroup", 6, 9),
    (12, "Heartbeat", 4, 4),
    (13, "LeaveGroup", 4, 5),
    (14, "SyncGroup", 4, 5),
    (15, "DescribeGroups", 5, 6),
    (16, "ListGroups", 3, 5),
    (17, "SaslHandshake", u16::MAX, 1),
    (18, "ApiVersions", 3, 5),
    (19, "CreateTopics", 5, 7),
    (20, "DeleteTopics", 4, 6),
    (21, "DeleteRecords", 2, 2),
    (22, "InitProducerId", 2, 6),
    (23, "OffsetForLeaderEpoch", 4, 4),
    (24, "AddPartitionsToTxn", 3, 5),
    (25, "AddOffsetsToTxn", 3, 4),
    (26, "EndTxn", 3, 5),
    (27, "WriteTxnMarkers", 1, 2),
    (28, "TxnOffsetCommit", 3, 6),
    (29, "DescribeAcls", 2, 3),
    (30, "CreateAcls", 2, 3),
    (31, "DeleteAcls", 2, 3),
    (32, "DescribeConfigs", 4, 4),
    (33, "AlterConfigs", 2, 2),
    (34, "AlterReplicaLogDirs", 2, 2),
    (35, "DescribeLogDirs", 2, 5),
    (36, "SaslAuthenticate", 2, 2),
    (37, "CreatePartitions", 2, 3),
    (38, "CreateDelegationToken", 2, 3),
    (39, "RenewDelegationToken", 2, 2),
    (40, "ExpireDelegationToken", 2, 2),
    (41, "DescribeDelegationToken", 2, 3),
    (42, "DeleteGroups", 2, 3),
    (43, "ElectLeaders", 2, 2),
    (44, "IncrementalAlterConfigs", 1, 1),
    (45, "AlterPartitionReassignments", 0, 1),
    (46, "ListPartitionReassignments", 0, 0),
    (47, "OffsetDelete", u16::MAX, 0),
    (48, "DescribeClientQuotas", 1, 1),
    (49, "AlterClientQuotas", 1, 1),
    (50, "DescribeUserScramCredentials", 0, 0),
    (51, "AlterUserScramCredentials", 0, 0),
    (52, "Vote", 0, 2),
    (53, "BeginQuorumEpoch", 1, 1),
    (54, "EndQuorumEpoch", 1, 1),
    (55, "DescribeQuorum", 0, 2),
    (56, "AlterPartition", 0, 3),
    (57, "UpdateFeatures", 0, 2),
    (58, "Envelope", 0, 0),
    (59, "FetchSnapshot", 0, 1),
    (60, "DescribeCluster", 0, 2),
    (61, "DescribeProducers", 0, 0),
    (62, "BrokerRegistration", 0, 4),
    (63, "BrokerHeartbeat", 0, 2),
    (64, "UnregisterBroker", 0, 0),
    (65, "DescribeTransactions", 0, 0),
    (66, "ListTransactions", 0, 2),
    (67, "AllocateProducerIds", 0, 0),
    (68, "ConsumerGroupHeartbeat", 0, 1),
    (69, "ConsumerGroupDescribe", 0, 1),
    (70, "ControllerRegistration", 0, 0),
    (71, "GetTelemetrySubscriptions", 0, 0),
    (72, "PushTelemetry", 0, 0),
    (73, "AssignReplicasToDirs", 0, 0),
    (74, "ListConfigResources", 0, 1),
    (75, "DescribeTopicPartitions", 0, 0),
    (76, "ShareGroupHeartbeat", 0, 1),
    (77, "ShareGroupDescribe", 0, 1),
    (78, "ShareFetch", 0, 2),
    (79, "ShareAcknowledge", 0, 2),
    (80, "AddRaftVoter", 0, 1),
    (81, "RemoveRaftVoter", 0, 0),
    (82, "UpdateRaftVoter", 0, 0),
    (83, "InitializeShareGroupState", 0, 0),
    (84, "ReadShareGroupState", 0, 0),
    (85, "WriteShareGroupState", 0, 1),
    (86, "DeleteShareGroupState", 0, 0),
    (87, "ReadShareGroupStateSummary", 0, 1),
    (88, "StreamsGroupHeartbeat", 0, 1),
    (89, "StreamsGroupDescribe", 0, 1),
    (90, "DescribeShareGroupOffsets", 0, 1),
    (91, "AlterShareGroupOffsets", 0, 0),
    (92, "DeleteShareGroupOffsets", 0, 0),
    (93, "StreamsGroupTopologyDescriptionUpdate", 0, 0),
    (94, "UnregisterController", 0, 0),
];

pub const PRODUCE: i16 = 0;
pub const FETCH: i16 = 1;
pub const LIST_OFFSETS: i16 = 2;
pub const METADATA: i16 = 3;
pub const OFFSET_COMMIT: i16 = 8;
pub const OFFSET_FETCH: i16 = 9;
pub const FIND_COORDINATOR: i16 = 10;
pub const JOIN_GROUP: i16 = 11;
pub const HEARTBEAT: i16 = 12;
pub const LEAVE_GROUP: i16 = 13;
pub const SYNC_GROUP: i16 = 14;
pub const SASL_HANDSHAKE: i16 = 17;
pub const API_VERSIONS: i16 = 18;
pub const CREATE_TOPICS: i16 = 19;
pub const DELETE_TOPICS: i16 = 20;
pub const INIT_PRODUCER_ID: i16 = 22;
pub const SASL_AUTHENTICATE: i16 = 36;
pub const CONSUMER_GROUP_HEARTBEAT: i16 = 68;

/// The highest API version accepted in a request header (Kafka's are below 20).
pub const MAX_VERSION: i16 = 40;

/// An API key's name, if it is one.
pub fn name(key: i16) -> Option<&'static str> {
    usize::try_from(key).ok().and_then(|k| APIS.get(k)).map(|a| a.1)
}

/// The highest version of API `key` (None: not an API key).
pub fn highest(key: i16) -> Option<i16> {
    usize::try_from(key).ok().and_then(|k| APIS.get(k)).map(|a| a.3)
}

/// Whether `version` of API `key` is a flexible version (unknown keys: no).
pub fn flexible(key: i16, version: i16) -> bool {
    usize::try_from(key)
        .ok()
        .and_then(|k| APIS.get(k))
        .is_some_and(|a| version >= 0 && (version as u16) >= a.2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_is_indexed_by_key() {
        for (i, a) in super::APIS.iter().enumerate() {
            assert_eq!(a.0 as usize, i, "{}", a.1);
        }
    }
}
