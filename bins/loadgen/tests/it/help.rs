//! What `--help` says holds: every example in every tool's help parses for the tool that
//! shows it, and the environment scheme reaches every flag of every tool.

use std::ffi::OsString;
use std::process::Command;

use test_support::{shell_words, workspace_bin};

/// The example commands of a help text: the lines of its "Examples" section that start with
/// the program's name, with the lines a trailing `\` continues them onto.
fn examples(program: &str, help: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_examples = false;
    let mut continued = false;
    for line in help.lines() {
        let t = line.trim();
        if continued {
            if let Some(last) = out.last_mut() {
                last.push('\n');
                last.push_str(t);
            }
            continued = t.ends_with('\\');
            continue;
        }
        if t.starts_with("Examples") {
            in_examples = true;
            continue;
        }
        if t.is_empty() {
            in_examples = false;
            continue;
        }
        if in_examples && t.starts_with(&format!("{program} ")) {
            out.push(t.to_string());
            continued = t.ends_with('\\');
        }
    }
    out
}

/// The placeholders examples use, each given a value that a real run would have: `$START_AT`
/// an instant two minutes ahead (the examples show how to make it with `date`).
fn with_sample_values(example: &str) -> String {
    let ahead = std::time::SystemTime::now() + std::time::Duration::from_secs(120);
    let secs = ahead
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    example.replace("$START_AT", &secs.to_string())
}

#[test]
fn every_example_in_every_help_parses_for_the_tool_that_shows_it() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (prefix, help) in loadgen::help_texts() {
        let program = &prefix[0];
        for example in examples(program, &help) {
            let example = with_sample_values(&example);
            let words = shell_words(&example).expect("an example is one shell command");
            let argv: Vec<OsString> = words.into_iter().map(OsString::from).collect();
            if let Err(e) = loadgen::check(argv) {
                failures.push(format!("{example}\n    -> {e}"));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "examples that do not parse:\n{}",
        failures.join("\n")
    );
    // pub, sub, jobs, merge, the presets and loadgen's own: a lost section would pass empty.
    assert!(checked >= 20, "only {checked} examples found");
}

#[test]
fn every_tool_help_shows_examples_and_the_environment_scheme() {
    for (prefix, help) in loadgen::help_texts() {
        assert!(help.contains("LOADGEN_<FLAG>"), "{prefix:?}: {help}");
    }
}

/// The `--threshold` examples in the help of `--threshold` itself: `field<op>value` in
/// backticks, up to the list of fields.
fn threshold_examples(help: &str) -> Vec<String> {
    let Some(at) = help.find("--threshold <EXPR>") else {
        return Vec::new();
    };
    let text = &help[at..];
    let text = &text[..text.find("The fields:").unwrap_or(text.len())];
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|e| e.split_whitespace().collect::<String>())
        .collect()
}

#[test]
fn every_threshold_example_in_every_help_is_valid_for_its_tool() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (prefix, help) in loadgen::help_texts() {
        for expr in threshold_examples(&help) {
            let mut argv: Vec<OsString> = prefix.iter().map(OsString::from).collect();
            // merge needs a report to name; job-pub's run its database and broker.
            if prefix.last().is_some_and(|p| p == "merge") {
                argv.push("x.json".into());
            }
            if prefix.last().is_some_and(|p| p == "run") {
                for a in [
                    "--database-url",
                    "postgres://x@127.0.0.1:1/x",
                    "--broker",
                    "mqtt://127.0.0.1:1",
                ] {
                    argv.push(a.into());
                }
            }
            argv.push("--threshold".into());
            argv.push(expr.clone().into());
            if let Err(e) = loadgen::check(argv) {
                failures.push(format!("{prefix:?} --threshold {expr}: {e}"));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // pub x3, sub x2, jobs run x2, merge: at least two each.
    assert!(checked >= 16, "only {checked} threshold examples found");
}

/// A check that a wrong field in a help example would fail: `--threshold` fields are the
/// tool's own (backend-sub's help once showed publisher fields it rejects).
#[test]
fn a_threshold_on_another_tools_field_does_not_parse() {
    let argv = |s: &str| {
        shell_words(s)
            .unwrap()
            .into_iter()
            .map(OsString::from)
            .collect()
    };
    assert!(loadgen::check(argv("loadgen sub --threshold ack_latency_p99<5ms")).is_err());
    assert!(loadgen::check(argv("loadgen pub --threshold points_missing==0")).is_err());
    assert!(loadgen::check(argv("loadgen pub --threshold point_rate>=9900")).is_ok());
}

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(workspace_bin(bin));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_flag_of_every_tool_is_read_from_its_loadgen_variable() {
    // An invalid value in LOADGEN_<FLAG> is refused naming the variable: proof the variable
    // is read. backend-sub once ignored LOADGEN_EXPECT and LOADGEN_TOPIC.
    for (bin, args, var) in [
        ("backend-sub", vec![], "LOADGEN_EXPECT"),
        ("loadgen", vec!["sub"], "LOADGEN_EXPECT"),
        ("loadgen", vec!["sub"], "LOADGEN_IDLE_TIMEOUT"),
        ("loadgen", vec!["pub"], "LOADGEN_RATE"),
        ("job-pub", vec!["run"], "LOADGEN_POOL"),
        ("loadgen", vec!["jobs", "run"], "LOADGEN_BATCH"),
        ("loadgen", vec!["merge", "x.json"], "LOADGEN_SHARDS"),
    ] {
        let (code, _, err) = run(bin, &args, &[(var, "not-a-number")]);
        assert_eq!(code, Some(2), "{bin} {args:?} {var}: {err}");
        assert!(err.contains(var), "{bin} {args:?} {var}: {err}");
    }
}

#[test]
fn a_variable_that_names_no_flag_is_a_warning_naming_the_nearest() {
    let (code, _, err) = run("loadgen", &["sub", "--help"], &[("LOADGEN_EXPCT", "5")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("LOADGEN_EXPCT names no flag of loadgen sub")
            && err.contains("did you mean LOADGEN_EXPECT (--expect)?"),
        "{err}"
    );
}

#[test]
fn job_pubs_old_variables_are_read_with_a_deprecation_warning() {
    let (code, _, err) = run(
        "job-pub",
        &[
            "run",
            "--database-url",
            "postgres://x@127.0.0.1:1/x",
            "--broker",
            "mqtt://127.0.0.1:1",
        ],
        &[("JOB_PUB_BATCH", "0")],
    );
    // The old name is read (its bad value refused) and named as deprecated.
    assert!(
        err.contains("JOB_PUB_BATCH is a deprecated name; it is read as LOADGEN_BATCH"),
        "{err}"
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--batch must be from 1 to 100000"), "{err}");
}

#[test]
fn database_url_is_read_as_libpq_users_expect() {
    let (code, _, err) = run(
        "loadgen",
        &[
            "jobs",
            "run",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--batch",
            "0",
        ],
        &[("DATABASE_URL", "postgres://x@127.0.0.1:1/x")],
    );
    // Past the database URL (given by DATABASE_URL) to the next check.
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--batch must be from 1 to 100000"), "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn loadgen_names_its_commands_and_the_nearest_to_a_typo() {
    let (code, out, _) = run("loadgen", &["--help"], &[]);
    assert_eq!(code, Some(0));
    for c in ["pub", "sub", "jobs", "merge"] {
        assert!(out.contains(&format!("\n  {c} ")), "{out}");
    }
    let (code, _, err) = run("loadgen", &["subscribe"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("did you mean loadgen sub?"), "{err}");
}

/// The environment paragraph of each help is true for its tool: its example is one of the
/// tool's flags, `--config` is named only where there is one, and every help ends with the
/// tool's exit codes.
#[test]
fn each_helps_environment_and_exit_code_paragraphs_are_true_for_its_tool() {
    for (prefix, help) in loadgen::help_texts() {
        if prefix.len() == 1 && prefix[0] == "loadgen" {
            continue;
        }
        let env = help
            .split("Environment:")
            .nth(1)
            .unwrap_or_else(|| panic!("{prefix:?} has no Environment paragraph"));
        let example = env
            .split("(--")
            .nth(1)
            .and_then(|e| e.split(':').next())
            .unwrap_or_else(|| panic!("{prefix:?}: no example in {env}"));
        // A command of subcommands (job-pub) lists them, not their flags.
        if !help.contains("\nCommands:") {
            assert!(
                help.contains(&format!("--{example} ")),
                "{prefix:?}: the example --{example} is not a flag of this tool"
            );
        }
        let has_config = help.contains("--config <FILE>");
        assert_eq!(
            env.contains("--config"),
            has_config,
            "{prefix:?}: --config named in the environment paragraph iff the tool has it"
        );
        assert!(help.contains("Exit codes: 0 "), "{prefix:?}: no exit codes");
    }
}

#[test]
fn loadgen_help_names_a_commands_help_and_switches_read_1_and_0() {
    let (code, out, _) = run("loadgen", &["help", "sub"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Usage: loadgen sub"), "{out}");
    // LOADGEN_QUIET=1 is on, as people write it: the run goes on to the broker (exit 3),
    // not a usage error.
    let (code, _, err) = run(
        "loadgen",
        &[
            "pub",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--connect-timeout",
            "100ms",
        ],
        &[("LOADGEN_QUIET", "1")],
    );
    assert_eq!(code, Some(3), "{err}");
}

#[test]
fn a_variable_of_a_flag_jobs_do_not_offer_is_named_not_taken() {
    // A LOADGEN_CA_FILE shared with a TLS publisher: job-pub speaks no TLS yet.
    let (code, _, err) = run(
        "job-pub",
        &[
            "run",
            "--database-url",
            "postgres://x@127.0.0.1:1/x",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--batch",
            "0",
        ],
        &[
            ("LOADGEN_CA_FILE", "/nonexistent/ca.pem"),
            ("LOADGEN_COUNT", "5"),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("LOADGEN_CA_FILE names no flag of job-pub run"),
        "{err}"
    );
    assert!(
        err.contains("LOADGEN_COUNT is a flag of job-pub seed, not of job-pub run"),
        "{err}"
    );
    assert!(err.contains("--batch must be from 1 to 100000"), "{err}");
}

/// `loadgen` started under a seed tool's name (a link, as the benches run it) is that tool:
/// the same help, the same version line and the same usage error as the tool's own binary.
#[test]
fn loadgen_under_a_seed_tools_name_is_that_tool() {
    let dir = test_support::TempDir::new("seed-link");
    for tool in ["frontend1-pub", "frontend2-pub", "backend-sub", "job-pub"] {
        let link = dir.path(tool);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_loadgen"), &link).unwrap();
        for args in [&["--help"][..], &["--version"], &["--no-such-flag"]] {
            let own = Command::new(workspace_bin(tool))
                .args(args)
                .output()
                .unwrap();
            let linked = Command::new(&link).args(args).output().unwrap();
            assert_eq!(linked.status.code(), own.status.code(), "{tool} {args:?}");
            assert_eq!(
                String::from_utf8_lossy(&linked.stdout),
                String::from_utf8_lossy(&own.stdout),
                "{tool} {args:?}"
            );
            assert_eq!(
                String::from_utf8_lossy(&linked.stderr),
                String::from_utf8_lossy(&own.stderr),
                "{tool} {args:?}"
            );
        }
    }
}
