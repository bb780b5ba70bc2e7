//! Why a directive is not translated, in the operator's terms: one table per place a directive
//! can appear (top level, a block, `stream`), and the two losses that need the directive's own
//! values to say what to do (TLS to the backends, `set_real_ip_from`).

use super::values::toml_str;

/// Why a top-level directive outside `stream` is not translated.
pub(super) fn outside_reason(name: &str) -> &'static str {
    match name {
        "http" => "warren proxies TCP only; HTTP stays with NGINX or another proxy",
        "mail" => "mail proxying is not supported",
        "events" | "worker_connections" | "use" | "multi_accept" => {
            "NGINX event-loop settings; warren's data plane sizes itself (and caps connections \
             with the listener's max_connections)"
        }
        "worker_processes" | "worker_cpu_affinity" => {
            "see `warren run --workers N` (default: one per CPU)"
        }
        "user" => "run warren under its own user with systemd (see systemd/)",
        "worker_rlimit_nofile" => "raise LimitNOFILE in warren's systemd unit",
        "pid" => "warren writes no pid file; systemd tracks the process",
        "load_module" => "NGINX modules do not apply",
        "error_log" => "warren logs to stderr (the journal under systemd); see --log-level",
        _ => "not translated",
    }
}

/// Why a block directive inside `stream` is not translated, when it has a specific reason.
pub(super) fn block_reason(name: &str) -> Option<&'static str> {
    match name {
        "map" | "geo" | "split_clients" => {
            Some("variables are not supported by warren; the config it feeds cannot be translated")
        }
        _ => None,
    }
}

/// Why a directive inside `stream` (or its server or upstream blocks) is not translated.
pub(super) fn stream_reason(name: &str) -> &'static str {
    match name {
        n if n.starts_with("proxy_ssl") => {
            "not configurable: warren speaks TLS 1.2 and 1.3 to a pool's backends with rustls's \
             safe cipher suites ([pool.NAME.tls]: ca, server_name, cert, key)"
        }
        n if n.starts_with("ssl") => {
            "warren does not terminate TLS; let RabbitMQ terminate it (listeners.ssl) and forward \
             its TLS port as plain TCP"
        }
        n if n.starts_with("js_") || n == "perl" || n == "set" => {
            "scripting and variables are not supported"
        }
        "resolver" | "resolver_timeout" => {
            "warren resolves backend host names at load and every pool's resolve_interval, through \
             the system resolver or [resolver] nameservers = [\"IP:PORT\", ...]: set those by \
             hand"
        }
        n if n.starts_with("limit_conn") => {
            "no per-key connection limits; the closest is the listener's max_connections (one cap \
             for the whole listener)"
        }
        "access_log" | "log_format" | "open_log_file_cache" => {
            "warren logs one line per closed connection to stderr (the journal under systemd); \
             there is no access log format"
        }
        "error_log" => "warren logs to stderr (the journal under systemd); see --log-level",
        "allow" | "deny" => "warren has no access lists; use a firewall",
        "proxy_bind" => "binding a source address for backend connections is not supported",
        "proxy_buffer_size" | "preread_buffer_size" | "preread_timeout" => {
            "not configurable: warren forwards with splice(2) and a small fixed buffer"
        }
        "proxy_download_rate" | "proxy_upload_rate" => "warren has no rate limiting",
        "proxy_responses" | "proxy_requests" => "UDP settings; warren proxies TCP only",
        "proxy_socket_keepalive" => "TCP keepalive towards backends is not configurable",
        "zone" => "shared memory zone: not needed, warren's workers share one routing snapshot",
        "keepalive" | "keepalive_timeout" | "keepalive_requests" => {
            "connection reuse does not apply to a TCP proxy"
        }
        "return" => "warren only proxies; it has no fixed responses",
        "ssl_preread" => "warren does not read TLS ClientHello; no routing by SNI",
        "variables_hash_max_size" | "variables_hash_bucket_size" => "variables are not supported",
        _ => "no warren equivalent; not translated",
    }
}

/// Why a kept listener whose server had `proxy_ssl on` (`ssl`: "`proxy_ssl on;` (FILE:LINE)")
/// but no `proxy_ssl_trusted_certificate` no longer protects its traffic, and the ways out.
pub(super) fn tls_lost(ssl: &str) -> String {
    format!(
        "TLS to the backends is lost: {ssl}: NGINX encrypted this server's traffic to its \
         backends, but without proxy_ssl_trusted_certificate there is no CA to check the nodes' \
         certificates with, which warren always does, so this listener sends the traffic to them \
         in clear (and a backend port that expects TLS, such as RabbitMQ's 5671, will refuse \
         it). Either add [pool.NAME.tls] to its pool with ca = the PEM file of the CA that signs \
         the nodes' certificates and encrypt = \"all\"; or have the clients connect with TLS \
         (amqps) to RabbitMQ's TLS port (5671), which warren forwards untouched; or, only on a \
         network you trust, point the pool at RabbitMQ's plain port (5672)"
    )
}

/// Why `set_real_ip_from SOURCES` matters: without `proxy_protocol_from` warren trusts the
/// PROXY header of every source.
pub(super) fn real_ip_reason(sources: &[String]) -> String {
    let list: Vec<String> = sources.iter().map(|s| toml_str(s)).collect();
    format!(
        "not translated, and what is left is open: a listener with accept_proxy_protocol \
         trusts the PROXY header of every source unless its proxy_protocol_from lists the ones \
         to trust, so whoever can reach the listener can forge a client address (the one warren \
         logs, hashes with source_hash and passes on to RabbitMQ). Restrict it to your load \
         balancers: add `proxy_protocol_from = [{}]` to each listener with \
         accept_proxy_protocol (a connection from another source is then closed, where NGINX \
         kept the peer's own address), and firewall the port to them",
        list.join(", ")
    )
}
