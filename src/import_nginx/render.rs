//! The warren TOML written out: the warnings as a header, the `[admin]` section, listeners,
//! pools with their probe and backends, each value with a comment naming the NGINX directive it
//! came from (or why warren chose it). A pool no listener uses is written commented out.

use super::*;

impl Translator {
    /// The TOML text.
    pub(super) fn render(&self, main: &Path, warnings: &[Warning]) -> String {
        let mut out = String::new();
        header(&mut out, main, warnings);
        self.admin(&mut out);
        for l in &self.listeners {
            listener(&mut out, l);
        }
        for p in &self.pools {
            if p.used {
                pool(&mut out, p);
            } else {
                unused_pool(&mut out, p);
            }
        }
        out
    }

    /// `[admin]` on loopback, so that `warren ctl` (status, drain, upgrade) works at once: on
    /// warren's default port unless a listener has it.
    fn admin(&self, out: &mut String) {
        let taken = |port: u16| {
            self.listeners.iter().find(|l| {
                l.listen
                    .value
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|a| a.port() == port)
            })
        };
        let default = crate::config::DEFAULT_ADMIN_LISTEN.port();
        let port = (default..=u16::MAX)
            .find(|p| taken(*p).is_none())
            .unwrap_or(default);
        let why = match taken(default) {
            Some(l) => format!(
                "loopback: only this machine reaches it; {default}, warren's default, is \
                 listener {}'s",
                l.name
            ),
            None => "warren's default: loopback, only this machine reaches it".to_string(),
        };
        out.push('\n');
        with_note(
            out,
            "[admin]",
            "NGINX has none: `warren ctl` (status, drain, upgrade), /metrics and /readyz",
        );
        line(out, "listen", &toml_str(&format!("127.0.0.1:{port}")), &why);
        with_note(
            out,
            "# token_file = \"/etc/warren/token\"",
            "required on a non-loopback listen: the API can drain backends",
        );
    }
}

/// The comment at the top: where the text came from, what was not translated, no `[admin]`.
fn header(out: &mut String, main: &Path, warnings: &[Warning]) {
    let _ = writeln!(
        out,
        "# warren config translated by `warren import-nginx` from {}.",
        main.display()
    );
    out.push_str(
        "# Check it with `warren check --config FILE`. Keys that are not set keep warren's \
         defaults,\n# which are NGINX's (connect_timeout 60s, idle_timeout 10m, round_robin, \
         every backend tried).\n",
    );
    if warnings.is_empty() {
        out.push_str("# Every NGINX directive was translated.\n");
    } else {
        let _ = writeln!(
            out,
            "# {} NGINX directive(s) not translated exactly (also printed on stderr):",
            warnings.len()
        );
        for w in warnings {
            let _ = writeln!(out, "#   {}", one_line(&w.to_string()));
        }
    }
    out.push_str(
        "#\n# Added, as NGINX has neither: an [admin] section and a probe per pool, so that \
         `warren ctl upgrade`\n# works at once; the comments say what was chosen and why.\n",
    );
}

/// One `[[listener]]` table.
fn listener(out: &mut String, l: &OutListener) {
    out.push_str("\n[[listener]]\n");
    for c in &l.comments {
        for l in wrap(&one_line(c), COMMENT_WIDTH) {
            let _ = writeln!(out, "# {l}");
        }
    }
    line(out, "name", &toml_str(&l.name), "");
    line(out, "listen", &toml_str(&l.listen.value), &l.listen.note);
    line(out, "pool", &toml_str(&l.pool.value), &l.pool.note);
    for (key, value, note) in &l.keys {
        line(out, key, value, note);
    }
}

/// One `[pool.NAME]` table, its comments wrapped, then its backends.
fn pool(out: &mut String, p: &OutPool) {
    let key = toml_key(&p.name);
    out.push('\n');
    with_note(out, &format!("[pool.{key}]"), &p.note);
    line(
        out,
        "balance",
        &toml_str(p.balance.value.as_str()),
        &p.balance.note,
    );
    for c in &p.comments {
        for l in wrap(&one_line(c), COMMENT_WIDTH) {
            let _ = writeln!(out, "# {l}");
        }
    }
    health(out, &key, &p.health);
    if let Some(tls) = &p.tls {
        render_tls(out, &key, tls);
    }
    for b in &p.backends {
        backend(out, &key, b);
    }
}

/// A pool no listener uses, commented out under a note: `warren check` would resolve its host
/// names, and warren would probe backends nothing connects to.
fn unused_pool(out: &mut String, p: &OutPool) {
    let note = format!(
        "Commented out: no listener uses this pool (NGINX named it {:?}; the servers that proxy \
         to it were left out, see the warnings, or none does). Uncomment it with a listener \
         that uses it.",
        p.nginx_name
    );
    out.push('\n');
    for l in wrap(&note, COMMENT_WIDTH) {
        let _ = writeln!(out, "# {l}");
    }
    let mut text = String::new();
    pool(&mut text, p);
    for l in text.trim_start_matches('\n').lines() {
        if l.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "# {l}");
        }
    }
}

/// A pool's `[pool.KEY.health]`: the probe kind with why, `fall` where NGINX's `max_fails` set
/// it; the rest at warren's defaults, said in a comment.
fn health(out: &mut String, pool_key: &str, h: &OutHealth) {
    out.push('\n');
    with_note(
        out,
        &format!("[pool.{pool_key}.health]"),
        "NGINX has none; `warren ctl upgrade` waits on it",
    );
    line(out, "kind", &toml_str(h.kind), &h.why);
    if let Some(fall) = &h.fall {
        line(out, "fall", &fall.value.to_string(), &fall.note);
    }
    use crate::config::{
        DEFAULT_FALL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, DEFAULT_RISE,
    };
    let defaults = format!(
        "interval {}, timeout {}, rise {DEFAULT_RISE}, fall {DEFAULT_FALL} unless set: warren's \
         defaults; a failed client connect counts as a failed probe.",
        warren_duration(DEFAULT_HEALTH_INTERVAL),
        warren_duration(DEFAULT_HEALTH_TIMEOUT)
    );
    for l in wrap(&defaults, COMMENT_WIDTH) {
        let _ = writeln!(out, "# {l}");
    }
}

/// One `[[pool.KEY.backend]]` table; a backend `down` in NGINX is written commented out.
fn backend(out: &mut String, pool_key: &str, b: &OutBackend) {
    let prefix = if b.commented_out { "# " } else { "" };
    if b.commented_out {
        let _ = writeln!(
            out,
            "\n# `down` in NGINX; uncomment and drain it to keep it known:"
        );
    } else {
        out.push('\n');
    }
    let _ = writeln!(out, "{prefix}[[pool.{pool_key}.backend]]");
    let mut body = String::new();
    line(&mut body, "name", &toml_str(&b.name), "");
    line(&mut body, "addr", &toml_str(&b.addr), &b.note);
    if let Some(weight) = b.weight {
        line(&mut body, "weight", &weight.to_string(), "");
    }
    if b.backup {
        line(&mut body, "backup", "true", "");
    }
    for l in body.lines() {
        let _ = writeln!(out, "{prefix}{l}");
    }
}

/// `key = value   # note`, the note aligned.
pub(super) fn line(out: &mut String, key: &str, value: &str, note: &str) {
    with_note(out, &format!("{key} = {value}"), note);
}

/// Column trailing comments start at, when the text before them is short enough.
const NOTE_COLUMN: usize = 32;

/// `text  # note`: the note at [`NOTE_COLUMN`], or two spaces after a longer `text` (never
/// glued to it: `"..."# note` reads as part of the value); just `text` without a note.
fn with_note(out: &mut String, text: &str, note: &str) {
    if note.is_empty() {
        let _ = writeln!(out, "{text}");
        return;
    }
    let pad = NOTE_COLUMN.saturating_sub(text.chars().count()).max(2);
    let _ = writeln!(out, "{text}{:pad$}# {}", "", one_line(note));
}

/// Width pool comments are wrapped at (the `# ` not counted).
pub(super) const COMMENT_WIDTH: usize = 96;

/// Words of `text` in lines of at most `width` characters (a longer word gets its own line).
pub(super) fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    lines
}

/// Keeps a comment on one line: a newline inside a quoted NGINX value must not end it.
pub(super) fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
