//! Request routing on arbitrary method, path and query (split at the first two NULs). Only
//! what hyper would hand over is tried: a method token and a valid URI path and query.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let query = parts.next();
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let mut uri = String::from_utf8_lossy(path).into_owned();
    if let Some(q) = query {
        uri.push('?');
        uri.push_str(&String::from_utf8_lossy(q));
    }
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return;
    };
    let app = |name: &str| (name == "analytics").then_some(());
    let route = iamtokend::server::routes::resolve(&method, uri.path(), uri.query(), app);
    if let iamtokend::server::routes::Target::Refused(e) = route.target {
        assert!(matches!(e.status.as_u16(), 400 | 404 | 405), "{e:?}");
    }
});
