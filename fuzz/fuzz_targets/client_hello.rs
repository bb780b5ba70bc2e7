//! Any bytes at the start of a connection on a `[[listener.sni]]` listener.
#![no_main]

#[path = "../../tests/common/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(why) = fuzz_checks::client_hello(data) {
        panic!("{why}");
    }
});
