//! frontend1-pub: `loadgen pub` with the seed's frontend1 preset (its device, topic, client id and
//! batch of 1,000 points a message), see [`publisher_core::FRONTEND1`].

fn main() -> std::process::ExitCode {
    // With backend-core's verifier, so that `--verify` works here as in `loadgen pub`.
    publisher_core::main_with(
        publisher_core::FRONTEND1,
        std::env::args_os().collect(),
        Some(&backend_core::pubverify::PubVerifier),
    )
}
