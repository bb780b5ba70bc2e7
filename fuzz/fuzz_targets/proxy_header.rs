//! Any bytes at the start of a connection on an `accept_proxy_protocol` listener.
#![no_main]

#[path = "../../tests/common/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(why) = fuzz_checks::proxy_header(data) {
        panic!("{why}");
    }
});
