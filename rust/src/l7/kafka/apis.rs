//! Kafka's API keys: each one's name and first flexible version.
//!
//! From Apache Kafka 4.4's message definitions (`clients/src/main/resources/common/message/
//! *.json`: `apiKey`, `flexibleVersions`). The first flexible version decides the
//! headers' versions: a request's header is v2 (tagged fields after the client id) from
//! it on, else v1; a response's header v1 (tagged fields after the correlation id), else
//! v0 — except ApiVersions' response, whose header is always v0 (a client must read it
//! before it knows what the broker speaks).

/// (api key, name, first flexible version; `u16::MAX`: never flexible)
const APIS: &[(i16, &str, u16)] = &[
    (0, "Produce", 9),
    (1, "Fetch", 12),
    (2, "ListOffsets", 6),
    (3, "Metadata", 9),
    (4, "LeaderAndIsr", 4),
    (5, "StopReplica", 2),
    (6, "UpdateMetadata", 6),
    (7, "ControlledShutdown", 3),
    (8, "OffsetCommit", 8),
    (9, "OffsetFetch", 6),
    (10, "FindCoordinator", 3),
    (11, "JoinGroup", 6),
    (12, "Heartbeat", 4),
    (13, "LeaveGroup", 4),
    (14, "SyncGroup", 4),
    (15, "DescribeGroups", 5),
    (16, "ListGroups", 3),
    (17, "SaslHandshake", u16::MAX),
    (18, "ApiVersions", 3),
    (19, "CreateTopics", 5),
    (20, "DeleteTopics", 4),
    (21, "DeleteRecords", 2),
    (22, "InitProducerId", 2),
    (23, "OffsetForLeaderEpoch", 4),
    (24, "AddPartitionsToTxn", 3),
    (25, "AddOffsetsToTxn", 3),
    (26, "EndTxn", 3),
    (27, "WriteTxnMarkers", 1),
    (28, "TxnOffsetCommit", 3),
    (29, "DescribeAcls", 2),
    (30, "CreateAcls", 2),
    (31, "DeleteAcls", 2),
    (32, "DescribeConfigs", 4),
    (33, "AlterConfigs", 2),
    (34, "AlterReplicaLogDirs", 2),
    (35, "DescribeLogDirs", 2),
    (36, "SaslAuthenticate", 2),
    (37, "CreatePartitions", 2),
    (38, "CreateDelegationToken", 2),
    (39, "RenewDelegationToken", 2),
    (40, "ExpireDelegationToken", 2),
    (41, "DescribeDelegationToken", 2),
    (42, "DeleteGroups", 2),
    (43, "ElectLeaders", 2),
    (44, "IncrementalAlterConfigs", 1),
    (45, "AlterPartitionReassignments", 0),
    (46, "ListPartitionReassignments", 0),
    (47, "OffsetDelete", u16::MAX),
    (48, "DescribeClientQuotas", 1),
    (49, "AlterClientQuotas", 1),
    (50, "DescribeUserScramCredentials", 0),
    (51, "AlterUserScramCredentials", 0),
    (52, "Vote", 0),
    (53, "BeginQuorumEpoch", 1),
    (54, "EndQuorumEpoch", 1),
    (55, "DescribeQuorum", 0),
    (56, "AlterPartition", 0),
    (57, "UpdateFeatures", 0),
    (58, "Envelope", 0),
    (59, "FetchSnapshot", 0),
    (60, "DescribeCluster", 0),
    (61, "DescribeProducers", 0),
    (62, "BrokerRegistration", 0),
    (63, "BrokerHeartbeat", 0),
    (64, "UnregisterBroker", 0),
    (65, "DescribeTransactions", 0),
    (66, "ListTransactions", 0),
    (67, "AllocateProducerIds", 0),
    (68, "ConsumerGroupHeartbeat", 0),
    (69, "ConsumerGroupDescribe", 0),
    (70, "ControllerRegistration", 0),
    (71, "GetTelemetrySubscriptions", 0),
    (72, "PushTelemetry", 0),
    (73, "AssignReplicasToDirs", 0),
    (74, "ListConfigResources", 0),
    (75, "DescribeTopicPartitions", 0),
    (76, "ShareGroupHeartbeat", 0),
    (77, "ShareGroupDescribe", 0),
    (78, "ShareFetch", 0),
    (79, "ShareAcknowledge", 0),
    (80, "AddRaftVoter", 0),
    (81, "RemoveRaftVoter", 0),
    (82, "UpdateRaftVoter", 0),
    (83, "InitializeShareGroupState", 0),
    (84, "ReadShareGroupState", 0),
    (85, "WriteShareGroupState", 0),
    (86, "DeleteShareGroupState", 0),
    (87, "ReadShareGroupStateSummary", 0),
    (88, "StreamsGroupHeartbeat", 0),
    (89, "StreamsGroupDescribe", 0),
    (90, "DescribeShareGroupOffsets", 0),
    (91, "AlterShareGroupOffsets", 0),
    (92, "DeleteShareGroupOffsets", 0),
    (93, "StreamsGroupTopologyDescriptionUpdate", 0),
    (94, "UnregisterController", 0),
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
