//! Validation of `[admin]`: its address, limits, token and state files, and that it does not
//! share an address with a listener.

use super::*;

impl Validator<'_> {
    pub(super) fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let listen = match &raw.listen {
            Some(listen) => self.listen_addr("admin.listen", listen),
            None => Some(DEFAULT_ADMIN_LISTEN),
        };
        let token_file = self.path("admin.token_file", raw.token_file.as_ref());
        let state_file = self.path("admin.state_file", raw.state_file.as_ref());
        if let Some(listen) = listen {
            // Anyone who reaches the admin port can drain every backend.
            if !listen.ip().is_loopback() && raw.token_file.is_none() {
                self.report(
                    "admin.token_file",
                    "",
                    raw.listen.as_ref().map(|l| l.span()),
                    format!(
                        "required when admin.listen ({}) is not a loopback address: \
                         anyone who reaches the admin API can drain backends",
                        quote(&listen.to_string())
                    ),
                );
            }
        }
        let (max_connections, max_connections_per_source, idle_timeout) = self.admin_limits(&raw);
        AdminConfig {
            listen: listen.unwrap_or(DEFAULT_ADMIN_LISTEN),
            token_file,
            state_file,
            max_connections,
            max_connections_per_source,
            idle_timeout,
        }
    }

    /// `admin.max_connections`, `admin.max_connections_per_source`, `admin.idle_timeout`.
    pub(super) fn admin_limits(&mut self, raw: &RawAdmin) -> (usize, usize, Duration) {
        let mut count = |key: &str, raw: Option<&Spanned<usize>>, default: usize| match raw {
            Some(n) if *n.get_ref() == 0 => {
                self.report(
                    key,
                    "0",
                    Some(n.span()),
                    "must be at least 1: 0 would refuse every admin connection",
                );
                default
            }
            Some(n) => *n.get_ref(),
            None => default,
        };
        let total = count(
            "admin.max_connections",
            raw.max_connections.as_ref(),
            DEFAULT_ADMIN_MAX_CONNECTIONS,
        );
        let per_source = count(
            "admin.max_connections_per_source",
            raw.max_connections_per_source.as_ref(),
            DEFAULT_ADMIN_MAX_CONNECTIONS_PER_SOURCE,
        );
        if let Some(n) = raw.max_connections_per_source.as_ref() {
            if *n.get_ref() > total {
                self.report(
                    "admin.max_connections_per_source",
                    n.get_ref().to_string(),
                    Some(n.span()),
                    format!("must not exceed admin.max_connections ({total})"),
                );
            }
        }
        let idle = self.positive_duration(
            "admin.idle_timeout",
            raw.idle_timeout.as_ref(),
            DEFAULT_ADMIN_IDLE_TIMEOUT,
        );
        (total, per_source.min(total), idle)
    }

    /// `admin.listen` must not take a listener's address: `run` would fail to bind the second.
    pub(super) fn admin_clash(
        &mut self,
        admin: &AdminConfig,
        raw: Option<&Str>,
        listeners: &[ListenerConfig],
        listen_spans: &[Range<usize>],
    ) {
        let clash = listeners
            .iter()
            .zip(listen_spans)
            .enumerate()
            .find(|(_, (l, _))| overlaps(l.listen, admin.listen));
        let Some((i, (listener, span))) = clash else {
            return;
        };
        let (value, span) = match raw {
            Some(raw) => (quote(raw.get_ref()), raw.span()),
            // The default admin address: point at the listener that takes it.
            None => (quote(&admin.listen.to_string()), span.clone()),
        };
        self.report(
            "admin.listen",
            value,
            Some(span),
            format!(
                "takes the address of listener[{i}].listen = {} (listener {}); the admin API \
                 needs its own port",
                quote(&listener.listen.to_string()),
                quote(&listener.name)
            ),
        );
    }
}
