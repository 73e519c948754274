#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kagi_fuzz_targets::etsi014_request(data));
