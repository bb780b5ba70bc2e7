//! warren: a TCP load balancer for RabbitMQ clusters.
//!
//! The crate is a library with a thin binary (`src/main.rs`). Configuration is parsed and
//! validated in [`config`], turned into a routing snapshot in [`state`], and served by the data
//! plane in [`proxy`] (selection in [`balance`], PROXY headers in [`proxy_protocol`]); [`health`]
//! receives connect outcomes, [`drain`] drains backends (and decides whether it may),
//! [`admin`] serves `/metrics` and friends with the JSON contract of [`api`] (which `warren ctl`
//! reads too), and [`server`] wires the
//! process together on the event loops of [`workers`]. [`cli`] holds the command-line interface the binary parses.
//! [`http_client`] is the one HTTP client (webhooks of [`hooks`], `http` probes, `warren ctl`,
//! and the etcd client of [`fleet`], which lets warren instances share drains).

pub mod admin;
pub mod api;
pub mod balance;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod dns;
pub mod drain;
pub mod fleet;
pub mod handover;
pub mod health;
pub mod hooks;
pub mod http_client;
pub mod import_nginx;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod proxy_protocol;
pub mod rebalance;
pub mod resolve;
pub mod run;
pub mod server;
pub mod sni;
pub mod source;
pub mod state;
#[cfg(unix)]
pub mod systemd;
pub mod tls;
#[cfg(windows)]
pub mod windows_service;
pub mod workers;

pub use server::{Options, Server};
