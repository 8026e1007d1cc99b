//! The flags `scripts/bench` passes to a bench that takes no others: `--quick`, `--gate`,
//! `--json PATH` (the throughput bench's path: this bench writes its own file beside it),
//! `--only` (for another bench; ignored) and cargo's `--bench`.

use std::path::PathBuf;

pub struct Flags {
    pub quick: bool,
    pub gate: bool,
    /// Where this bench writes its JSON: `file` in `target/bench`, or beside `--json`.
    pub json: PathBuf,
}

/// The process's flags for a bench that writes `file`; an unknown one exits 2.
pub fn parse(file: &str) -> Flags {
    let mut f = Flags {
        quick: false,
        gate: false,
        json: test_support::workspace_root()
            .join("target/bench")
            .join(file),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => f.quick = true,
            "--gate" => f.gate = true,
            "--json" => {
                let p = PathBuf::from(args.next().expect("--json PATH"));
                f.json = p.with_file_name(file);
            }
            "--only" => {
                args.next();
            }
            "--bench" => {} // passed by cargo bench
            other => {
                eprintln!("unknown argument {other}; use --quick, --gate, --json PATH");
                std::process::exit(2);
            }
        }
    }
    f
}
