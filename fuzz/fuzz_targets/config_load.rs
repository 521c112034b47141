//! The config loader on arbitrary bytes: the input is split at the first NUL into the main
//! file and one app file. It must return (Ok or diagnostics), never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (main, app) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps.d")).unwrap();
    std::fs::write(dir.path().join("iamtokend.toml"), main).unwrap();
    std::fs::write(dir.path().join("apps.d/a.toml"), app).unwrap();
    let _ = iamtokend::config::load(&dir.path().join("iamtokend.toml"));
});
