//! The simulated Identity Center + STS (`iamtokend::sim::Sim`) as a process, for trying the
//! daemon by hand against it: prints the endpoint URL and the signing credentials to use, then
//! serves until Ctrl-C.
//!
//! `bench-sim [TOKEN_LIFETIME_SECS]`

use std::time::Duration;

use iamtokend::sim::{Sim, SimOptions};

fn main() {
    let lifetime: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let options = SimOptions {
            token_lifetime: Duration::from_secs(lifetime),
            ..SimOptions::default()
        };
        let sim = Sim::start(options.clone()).await.expect("simulator starts");
        println!("endpoint_url = \"{}\"", sim.endpoint_url());
        println!("AWS_ACCESS_KEY_ID={}", options.access_key_id);
        println!("AWS_SECRET_ACCESS_KEY={}", options.secret_access_key);
        println!("AWS_REGION={}", options.region);
        let _ = tokio::signal::ctrl_c().await;
        println!("calls: {}", sim.calls().len());
        sim.shutdown().await;
    });
}
