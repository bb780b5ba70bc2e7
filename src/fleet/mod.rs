//! The fleet layer: what lets several warren instances share drain state and safety rules
//! (`min_available`, `max_draining` across the fleet) through a store, so a drain made on one
//! instance is followed by all of them and two concurrent drains cannot both pass a fleet-wide
//! check (issue 19). This module owns the store client; wiring drains, registration and the
//! `[fleet]` config into warren comes on top of it and lives elsewhere. It must not touch routing,
//! health or the admin API.
//!
//! The store is etcd, spoken through etcd's own HTTP/JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`, `/v3/lease/*`) with the hyper client warren already has, not through the gRPC
//! crate (`etcd-client`): that one needs `protoc` on every build machine (the README's
//! fresh-machine build included) and brings tonic and prost. What the gateway costs instead: keys
//! and values travel as base64 in JSON, 64-bit numbers as JSON strings, fields at their zero
//! value are left out of answers (`succeeded: false` is absent), and the watch is a stream of
//! JSON objects on one long-lived response that [`etcd`] parses itself.

pub mod drains;
pub mod etcd;
pub mod instances;
pub mod view;

/// The etcd client `[fleet]` describes (its endpoints, timeout, credentials and TLS).
pub fn client(fleet: &crate::config::FleetConfig) -> Result<etcd::EtcdClient, etcd::EtcdError> {
    let credentials = match (&fleet.user, &fleet.password) {
        (Some(user), Some(password)) => Some(crate::http_client::Credentials {
            user: user.clone(),
            password: password.0.clone(),
        }),
        _ => None,
    };
    let tls = fleet.tls.as_ref().map(crate::tls::ClientTls::config);
    etcd::EtcdClient::new(&fleet.endpoints, fleet.timeout, credentials, tls)
}
