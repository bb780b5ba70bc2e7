//! The warren TOML written out: listeners, pools and backends, each value with a comment naming
//! the NGINX directive it came from, and the warnings as a header.

use super::*;

impl Translator {
    /// The TOML text.
    pub(super) fn render(&self, main: &Path, warnings: &[Warning]) -> String {
        let mut out = String::new();
        header(&mut out, main, warnings);
        for l in &self.listeners {
            listener(&mut out, l);
        }
        for p in &self.pools {
            pool(&mut out, p);
        }
        out
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
        "#\n# No [admin] section, as NGINX has none. Add one for /metrics, /readyz and \
         drain/undrain:\n# [admin]\n# listen = \"127.0.0.1:9901\"\n",
    );
}

/// One `[[listener]]` table.
fn listener(out: &mut String, l: &OutListener) {
    out.push_str("\n[[listener]]\n");
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
    let title = format!("[pool.{key}]");
    let _ = writeln!(out, "\n{title:<32}# {}", one_line(&p.note));
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
    for b in &p.backends {
        backend(out, &key, b);
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
    let assignment = format!("{key} = {value}");
    if note.is_empty() {
        let _ = writeln!(out, "{assignment}");
    } else {
        let _ = writeln!(out, "{assignment:<32}# {}", one_line(note));
    }
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
