//! `proxy_ssl on` (NGINX encrypts to the backends) translated: the pool gets `[pool.NAME.tls]`
//! with `encrypt = "all"`, its CA from `proxy_ssl_trusted_certificate`, its `server_name` from
//! `proxy_ssl_name`, its client certificate from `proxy_ssl_certificate` and
//! `proxy_ssl_certificate_key`. What cannot be carried over is a warning: no CA (warren always
//! checks the nodes' certificates, NGINX only with `proxy_ssl_verify on`), a name or file given
//! by a variable, one pool reached with and without `proxy_ssl`, or two servers asking one pool
//! for different TLS. The other `proxy_ssl_*` directives stay unsupported (`reasons`).

use super::*;

/// The `proxy_ssl_*` settings of a server that has a warren key, inherited from `stream`.
#[derive(Debug, Clone, Default)]
pub(super) struct SslSettings {
    pub(super) trusted_certificate: Option<Sourced<String>>,
    pub(super) name: Option<Sourced<String>>,
    pub(super) certificate: Option<Sourced<String>>,
    pub(super) certificate_key: Option<Sourced<String>>,
    pub(super) verify: Option<Sourced<bool>>,
}

/// A pool's `[pool.NAME.tls]`, each value with the directive it came from.
#[derive(Debug, Clone)]
pub(super) struct OutTls {
    /// "`proxy_ssl on;` (FILE:LINE)" of the first server that asked for it.
    pub(super) note: String,
    pub(super) ca: Sourced<String>,
    pub(super) server_name: Option<Sourced<String>>,
    pub(super) cert: Option<Sourced<String>>,
    pub(super) key: Option<Sourced<String>>,
}

impl OutTls {
    /// Whether two servers ask the pool for the same TLS.
    fn same(&self, other: &OutTls) -> bool {
        let value = |s: &Option<Sourced<String>>| s.as_ref().map(|s| s.value.clone());
        self.ca.value == other.ca.value
            && value(&self.server_name) == value(&other.server_name)
            && value(&self.cert) == value(&other.cert)
            && value(&self.key) == value(&other.key)
    }
}

impl Translator {
    /// A `proxy_ssl_*` directive warren has a key for, into `settings`; false for the others.
    pub(super) fn proxy_ssl_setting(
        &mut self,
        settings: &mut SslSettings,
        d: &Directive,
    ) -> Result<bool, ImportError> {
        let slot = match d.name.as_str() {
            "proxy_ssl_trusted_certificate" => &mut settings.trusted_certificate,
            "proxy_ssl_name" => &mut settings.name,
            "proxy_ssl_certificate" => &mut settings.certificate,
            "proxy_ssl_certificate_key" => &mut settings.certificate_key,
            "proxy_ssl_verify" => {
                settings.verify = Some(sourced(on_off(d)?, d));
                return Ok(true);
            }
            _ => return Ok(false),
        };
        let value = &d.args[0];
        if value.contains('$') {
            self.warn(
                d,
                "variables are not supported by warren; not translated (set the pool's \
                 [pool.NAME.tls] key by hand)",
            );
            *slot = None;
        } else {
            *slot = Some(sourced(value.clone(), d));
        }
        Ok(true)
    }

    /// A server with `proxy_ssl on` (`ssl`) that forwards to `pool` through `pass`: the
    /// pool's `[pool.NAME.tls]`, or the warnings and the listener's comments that say why
    /// its traffic goes in clear.
    pub(super) fn proxy_ssl_on(
        &mut self,
        pass: &Directive,
        pool: &str,
        ssl: &Sourced<bool>,
        settings: &SslSettings,
        comments: &mut Vec<String>,
    ) {
        let Some(ca) = settings.trusted_certificate.clone() else {
            self.warn(pass, tls_lost(&ssl.note));
            comments.push(format!(
                "TLS to the backends is lost: warren sends this listener's traffic to them in \
                 clear, where NGINX encrypted it with {}; see the warning above.",
                ssl.note
            ));
            return;
        };
        if !settings.verify.as_ref().is_some_and(|v| v.value) {
            self.warn(
                pass,
                format!(
                    "NGINX did not check the nodes' certificates ({ssl}, proxy_ssl_verify off, its \
                     default); warren always does, against {} and the server name: a node whose \
                     certificate does not chain to it or bear the name is not connected to",
                    ca.value,
                    ssl = ssl.note
                ),
            );
        }
        let verified = settings.verify.as_ref().is_some_and(|v| v.value);
        // Without proxy_ssl_name, NGINX checked the certificate against the proxy_pass host
        // ($proxy_host, the upstream's name); warren's default would be each backend's own host.
        let server_name = match &settings.name {
            None if verified => pass.args.first().map(|target| {
                let host = match target.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or(v6),
                    None => target.split(':').next().unwrap_or(target),
                };
                sourced(host.to_owned(), pass)
            }),
            name => name.clone(),
        };
        let tls = OutTls {
            note: ssl.note.clone(),
            ca,
            server_name,
            cert: settings.certificate.clone(),
            key: settings.certificate_key.clone(),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            self.warn(
                pass,
                "proxy_ssl_certificate and proxy_ssl_certificate_key go together; the one given \
                 is not translated",
            );
        }
        let Some(out) = self.pools.iter_mut().find(|p| p.name == pool) else {
            return;
        };
        match &out.tls {
            Some(first) if !first.same(&tls) => {
                let first = first.note.clone();
                self.warn(
                    pass,
                    format!(
                        "pool {pool:?} already speaks TLS as the server with {first} asked; one \
                         pool has one [pool.NAME.tls], so this server's proxy_ssl_* settings are \
                         not used (give it its own upstream)"
                    ),
                );
            }
            Some(_) => {}
            None => out.tls = Some(tls),
        }
        self.mixed_tls(pass, pool);
    }

    /// A server without `proxy_ssl` forwards to `pool` through `pass`.
    pub(super) fn proxy_ssl_off(&mut self, pass: &Directive, pool: &str) {
        if let Some(out) = self.pools.iter_mut().find(|p| p.name == pool) {
            out.plain_from.get_or_insert_with(|| note(pass));
        }
        self.mixed_tls(pass, pool);
    }

    /// A pool reached both with and without `proxy_ssl`: `encrypt = "all"` encrypts every
    /// listener's traffic to it.
    fn mixed_tls(&mut self, pass: &Directive, pool: &str) {
        let Some(out) = self.pools.iter_mut().find(|p| p.name == pool) else {
            return;
        };
        let (Some(tls), Some(plain)) = (&out.tls, &out.plain_from) else {
            return;
        };
        if out.mixed_warned {
            return;
        }
        let message = format!(
            "pool {pool:?} is reached with {} and without proxy_ssl ({plain}): warren encrypts \
             every listener's traffic to a pool with encrypt = \"all\", so the listener without \
             proxy_ssl now speaks TLS to its backends too (give it its own upstream if its \
             backends' port is plain)",
            tls.note
        );
        out.mixed_warned = true;
        self.warn(pass, message);
    }
}

/// `[pool.KEY.tls]` as the output writes it.
pub(super) fn render_tls(out: &mut String, pool_key: &str, tls: &OutTls) {
    use super::render::line;
    out.push('\n');
    let _ = writeln!(out, "[pool.{pool_key}.tls]");
    line(out, "ca", &toml_str(&tls.ca.value), &tls.ca.note);
    match &tls.server_name {
        Some(name) => line(out, "server_name", &toml_str(&name.value), &name.note),
        None => {
            let _ = writeln!(
                out,
                "# server_name: each backend's host as written (NGINX sent the proxy_pass name \
                 as proxy_ssl_name)"
            );
        }
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        line(out, "cert", &toml_str(&cert.value), &cert.note);
        line(out, "key", &toml_str(&key.value), &key.note);
    }
    line(out, "encrypt", "\"all\"", &tls.note);
}
