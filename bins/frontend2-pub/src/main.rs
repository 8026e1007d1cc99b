//! frontend2-pub: `loadgen pub` with the seed's frontend2 preset (its device, topic, client id and
//! batch of 1,000 points a message), see [`publisher_core::FRONTEND2`].

fn main() -> std::process::ExitCode {
    publisher_core::main(publisher_core::FRONTEND2)
}
