//! The values of the etcd client's calls: what a read found ([`KeyValue`], [`GetResponse`]),
//! what a transaction compares and does ([`Compare`], [`TxnOp`]) and what it answered, leases,
//! and the changes a watch hands over ([`Event`]). Plain data, as the gateway's JSON has it
//! once decoded (`wire` translates); no I/O.

/// A key and its value as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision that created the key (since it was last deleted).
    pub create_revision: i64,
    /// The revision of the last change: what a compare-and-swap compares.
    pub mod_revision: i64,
    /// How many times the key was written since it was created.
    pub version: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// What a read found, and the store's revision when it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResponse {
    /// The store's revision at the read: a watch from `revision + 1` misses nothing after it.
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteResponse {
    pub revision: i64,
    pub deleted: i64,
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// What a [`Compare`] looks at in the key, and the value it is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    /// 0 when the key does not exist.
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One condition of a [`super::EtcdClient::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub result: CompareResult,
    pub target: CompareTarget,
}

impl Compare {
    /// The key was last changed at `revision` (0: it does not exist).
    pub fn mod_revision_is(key: &[u8], revision: i64) -> Compare {
        Compare {
            key: key.to_vec(),
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// The key does not exist.
    pub fn absent(key: &[u8]) -> Compare {
        Compare {
            key: key.to_vec(),
            result: CompareResult::Equal,
            target: CompareTarget::CreateRevision(0),
        }
    }

    /// The key holds `value`.
    pub fn value_is(key: &[u8], value: &[u8]) -> Compare {
        Compare {
            key: key.to_vec(),
            result: CompareResult::Equal,
            target: CompareTarget::Value(value.to_vec()),
        }
    }
}

/// One operation of a [`super::EtcdClient::txn`] branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Get {
        key: Vec<u8>,
        prefix: bool,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<i64>,
    },
    Delete {
        key: Vec<u8>,
        prefix: bool,
    },
}

impl TxnOp {
    pub fn get(key: &[u8]) -> TxnOp {
        TxnOp::Get {
            key: key.to_vec(),
            prefix: false,
        }
    }

    pub fn get_prefix(prefix: &[u8]) -> TxnOp {
        TxnOp::Get {
            key: prefix.to_vec(),
            prefix: true,
        }
    }

    pub fn put(key: &[u8], value: &[u8], lease: Option<i64>) -> TxnOp {
        TxnOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        }
    }

    pub fn delete(key: &[u8]) -> TxnOp {
        TxnOp::Delete {
            key: key.to_vec(),
            prefix: false,
        }
    }

    pub fn delete_prefix(prefix: &[u8]) -> TxnOp {
        TxnOp::Delete {
            key: prefix.to_vec(),
            prefix: true,
        }
    }
}

/// The answer to one [`TxnOp`], in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    Get(GetResponse),
    Put,
    Delete { deleted: i64 },
}

/// What a transaction did: which branch ran, at which revision, and each operation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Every compare held, so the success branch ran.
    pub succeeded: bool,
    pub revision: i64,
    pub responses: Vec<TxnOpResponse>,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// The TTL etcd granted, in seconds (it may raise a TTL below its minimum).
    pub ttl: i64,
}

/// What a watched key went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: Vec<u8>,
    /// The new value; empty for a delete.
    pub value: Vec<u8>,
    /// The revision of this change.
    pub mod_revision: i64,
    /// The revision that created the key; 0 for a delete.
    pub create_revision: i64,
}
