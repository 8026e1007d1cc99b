//! backend-sub: `loadgen sub` with the seed's routes (see [`backend_core::BACKEND_SUB`]):
//! subscribes, decodes both point formats, routes points per device to their frontend and
//! proves delivery.

fn main() -> std::process::ExitCode {
    backend_core::main(backend_core::BACKEND_SUB)
}
