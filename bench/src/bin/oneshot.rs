//! The baseline for `iamtokend credential-process`: the least a client process can do to get
//! the same answer — connect to the socket, send one HTTP/1.1 request with std's blocking I/O,
//! print the body. No async runtime, no argument parser, no config lookup.
//!
//! `bench-oneshot SOCKET PATH`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: bench-oneshot SOCKET PATH");
        std::process::exit(2);
    };
    let mut stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot connect to {socket}: {e}");
            std::process::exit(3);
        }
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_end(&mut answer).is_err() {
        eprintln!("request failed");
        std::process::exit(1);
    }
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        eprintln!("no HTTP answer");
        std::process::exit(1);
    };
    if !answer.starts_with(b"HTTP/1.1 200") {
        eprintln!("not 200");
        std::process::exit(1);
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&answer[split + 4..]);
    let _ = out.write_all(b"\n");
}
