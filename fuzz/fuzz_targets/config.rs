//! Any bytes as a config file: parse + validate (offline) never panics; errors name the file.
#![no_main]

#[path = "../../tests/common/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(why) = fuzz_checks::config(data) {
        panic!("{why}");
    }
});
