//! Validation of `[[hook]]`: events, the exec or webhook action (its URL parsed at load), and
//! the timeout.

use super::*;

impl Validator<'_> {
    /// A webhook URL, parsed once for the hook worker, so `check` refuses what would fail
    /// every run.
    pub(super) fn webhook_url(&mut self, key: &str, url: &Str) -> Option<HttpUrl> {
        match HttpUrl::parse(url.get_ref()) {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                self.url_problem(key, url, e);
                None
            }
        }
    }

    /// Report an unusable URL; its user info may hold a password, so it is shown without.
    pub(super) fn url_problem(&mut self, key: &str, url: &Str, problem: UrlError) {
        let shown = quote(&without_userinfo(url.get_ref()));
        self.report(key, shown, Some(url.span()), problem.to_string());
    }

    pub(super) fn hook(&mut self, i: usize, raw: RawHook) -> HookConfig {
        let key = format!("hook[{i}]");
        if raw.on.get_ref().is_empty() {
            self.report(
                format!("{key}.on"),
                "[]",
                Some(raw.on.span()),
                format!("needs at least one event: {}", names_of::<HookEvent>()),
            );
        }
        let mut on = Vec::new();
        for event in raw.on.get_ref() {
            match lookup::<HookEvent>(event.get_ref()) {
                Some(e) if !on.contains(&e) => on.push(e),
                Some(_) => {}
                None => self.report(
                    format!("{key}.on"),
                    quote(event.get_ref()),
                    Some(event.span()),
                    format!("unknown event; expected one of {}", names_of::<HookEvent>()),
                ),
            }
        }
        let action = match (raw.exec, raw.webhook) {
            (Some(exec), None) => {
                let argv = exec.get_ref();
                if argv.first().filter(|program| !program.is_empty()).is_none() {
                    self.report(
                        format!("{key}.exec"),
                        format!("{argv:?}"),
                        Some(exec.span()),
                        "needs the program to run: exec = [\"/path/to/program\", \"arg\", ...]",
                    );
                }
                HookAction::Exec(exec.into_inner())
            }
            (None, Some(webhook)) => match self.webhook_url(&format!("{key}.webhook"), &webhook) {
                Some(url) => HookAction::Webhook(url),
                // Reported; keeps building the snapshot so later keys are checked too.
                None => HookAction::Exec(Vec::new()),
            },
            (Some(_), Some(webhook)) => {
                self.report(
                    format!("{key}.webhook"),
                    quote(&without_userinfo(webhook.get_ref())),
                    Some(webhook.span()),
                    "exec and webhook are mutually exclusive; use one [[hook]] for each",
                );
                HookAction::Exec(Vec::new())
            }
            (None, None) => {
                self.report(
                    key.clone(),
                    "",
                    Some(raw.on.span()),
                    "needs exactly one of exec = [...] or webhook = \"http://...\"",
                );
                HookAction::Exec(Vec::new())
            }
        };
        HookConfig {
            on,
            action,
            timeout: self.positive_duration(
                &format!("{key}.timeout"),
                raw.timeout.as_ref(),
                DEFAULT_HOOK_TIMEOUT,
            ),
        }
    }
}
