//! The JSON report validates against the committed schema, for every kind of run.

use serde_json::Value;
use test_support::{assert_matches_schema, Mosquitto};

use crate::common::{publish, Outcome, BIN};

fn validate(report: &Value) {
    assert_matches_schema("schema/publisher-report.schema.json", report);
}

#[test]
fn json_reports_validate_against_the_committed_schema() {
    let m = Mosquitto::start();
    let runs: [&[&str]; 3] = [
        &[
            "--qos", "1", "--rate", "0", "--total", "5000", "--batch", "100",
        ],
        &[
            "--qos", "0", "--rate", "50k", "--total", "5000", "--batch", "1",
        ],
        &["--qos", "0", "--rate", "max", "--duration", "300ms"],
    ];
    for args in runs {
        let mut all = vec!["--broker", m.url().leak() as &str, "--quiet"];
        all.extend_from_slice(args);
        let out: Outcome = publish(&all);
        out.assert_code(0);
        validate(out.report());
    }
}

#[test]
fn report_to_stdout_moves_the_summary_to_stderr() {
    let m = Mosquitto::start();
    let out = std::process::Command::new(BIN)
        .args([
            "--broker",
            &m.url(),
            "--total",
            "2000",
            "--rate",
            "0",
            "--quiet",
            "--report-json",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: Value =
        serde_json::from_slice(&out.stdout).expect("stdout is only the JSON report");
    validate(&report);
    assert_eq!(report["points_sent"], 2000);
    assert!(String::from_utf8_lossy(&out.stderr).contains("summary"));
}
