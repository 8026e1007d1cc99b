//! backend-sub: subscribes, decodes both point formats, routes points per device to their
//! frontend and proves delivery.

use std::process::ExitCode;

fn main() -> ExitCode {
    backend_core::main("backend-sub")
}
