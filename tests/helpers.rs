//! The test helpers' own checks (tests/common/): a helper that cannot fail would let every
//! test built on it pass without proving anything.

mod common;

use common::*;

const EXPOSITION: &str = "\
# HELP warren_listener_rejected_total Client connections refused
# TYPE warren_listener_rejected_total counter
warren_listener_rejected_total{listener=\"default\",reason=\"max_connections\"} 0
warren_listener_rejected_total{listener=\"default\",reason=\"no_backend\"} 3
warren_splice_pipes_leased 0
";

/// An absent series is a failure naming it and the series of its family, never a silent 0; a
/// test that expects absence says so with `metric_or_zero`.
#[test]
fn an_absent_metric_series_fails_unless_absence_is_expected() {
    assert_eq!(
        metric_value(
            EXPOSITION,
            r#"warren_listener_rejected_total{listener="default",reason="no_backend"}"#
        ),
        3.0
    );
    assert_eq!(metric_value(EXPOSITION, "warren_splice_pipes_leased"), 0.0);
    let absent = r#"warren_listener_rejected_total{listener="default",reason="accept_error"}"#;
    let panic = std::panic::catch_unwind(|| metric_value(EXPOSITION, absent))
        .expect_err("an absent series must fail");
    let message = panic.downcast::<String>().expect("a formatted message");
    assert!(message.contains(absent), "names the series: {message}");
    assert!(
        message.contains(r#"reason="max_connections""#)
            && message.contains(r#"reason="no_backend""#),
        "lists the family's series: {message}"
    );
    assert!(std::panic::catch_unwind(|| metric_value(EXPOSITION, "warren_renamed_total")).is_err());
    assert_eq!(metric_or_zero(EXPOSITION, absent), 0.0);
    assert_eq!(metric_opt(EXPOSITION, absent), None);
}

/// The tools scripts/test.sh installs (promtool, keepalived, curl, systemd-analyze) are needed
/// as root: a missing one fails the test there instead of skipping it.
#[test]
fn a_missing_tool_fails_as_root_and_skips_otherwise() {
    assert!(tool_or_skip_as("sh", "t", true).is_some());
    assert!(tool_or_skip_as("warren-no-such-tool", "t", false).is_none());
    let as_root = std::panic::catch_unwind(|| tool_or_skip_as("warren-no-such-tool", "t", true));
    assert!(as_root.is_err(), "a missing tool fails the test as root");
}
