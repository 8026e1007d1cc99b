//! The Kubernetes run, without a cluster: every manifest of `deploy/k8s` passes strict schema
//! validation (kubernetes-validate), the Indexed Job has the shape the barrier and the merge
//! need, and the Job's exact container command, run here once per index with
//! JOB_COMPLETION_INDEX set as the Job controller sets it, then the merge Job's, adds up.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_yaml::Value as Yaml;
use test_support::{workspace_root, Mosquitto, TempDir};

use crate::common::{n, BIN};

fn manifest(name: &str) -> Yaml {
    let p = workspace_root().join("deploy/k8s").join(name);
    serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

fn validate(files: &[&Path]) -> (i32, String) {
    let out = Command::new(workspace_root().join("scripts/validate-manifests"))
        .args(files)
        .output()
        .expect("run scripts/validate-manifests");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_manifest_passes_strict_validation_and_the_job_is_indexed_for_the_barrier() {
    let (code, said) = validate(&[]);
    assert_eq!(code, 0, "{said}");
    for f in [
        "job.yaml",
        "merge-job.yaml",
        "configmap.yaml",
        "secret.yaml",
        "reports-pvc.yaml",
    ] {
        assert!(
            said.contains(&format!("ok   deploy/k8s/{f}")),
            "{f}: {said}"
        );
    }
    // The validator is strict: a field the API does not have fails.
    let dir = TempDir::new("k8s-bad");
    let bad = dir.path("bad.yaml");
    let job = std::fs::read_to_string(workspace_root().join("deploy/k8s/job.yaml")).unwrap();
    std::fs::write(
        &bad,
        job.replace(
            "completionMode: Indexed",
            "completionMode: Indexed\n  completionz: 4",
        ),
    )
    .unwrap();
    let (code, said) = validate(&[&bad]);
    assert_ne!(code, 0, "{said}");

    let job = manifest("job.yaml");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(
        spec["parallelism"], spec["completions"],
        "every shard at once"
    );
    assert_eq!(spec["backoffLimitPerIndex"], 0);
    assert_eq!(spec["podReplacementPolicy"], "Failed");
    let shards = spec["completions"].as_u64().unwrap();
    let args = strings(&spec["template"]["spec"]["containers"][0]["args"]);
    let at = args
        .iter()
        .position(|a| a == "--shards")
        .expect("--shards in the Job");
    assert_eq!(
        args[at + 1],
        shards.to_string(),
        "--shards is the Job's completions"
    );
    let merge = manifest("merge-job.yaml");
    let margs = strings(&merge["spec"]["template"]["spec"]["containers"][0]["args"]);
    let at = margs
        .iter()
        .position(|a| a == "--shards")
        .expect("--shards in the merge");
    assert_eq!(margs[at + 1], shards.to_string());
    let env = &spec["template"]["spec"]["containers"][0]["env"];
    let names: Vec<&str> = env
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"LOADGEN_START_AT") && names.contains(&"LOADGEN_PASSWORD"),
        "{names:?}"
    );
    let password = env
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "LOADGEN_PASSWORD")
        .unwrap();
    assert_eq!(
        password["valueFrom"]["secretKeyRef"]["name"], "loadgen-broker",
        "from the Secret"
    );
}

/// `cmd` with the pod's paths mapped to `root` and the image's binary to ours.
fn local(cmd: &[String], root: &Path) -> Vec<String> {
    cmd.iter()
        .map(|a| {
            a.replace(
                "/etc/loadgen",
                &root.join("etc-loadgen").display().to_string(),
            )
            .replace("/reports", &root.join("reports").display().to_string())
        })
        .collect()
}

#[test]
fn the_jobs_container_command_for_each_index_then_the_merge_jobs_adds_up_to_the_fleet() {
    let m = Mosquitto::start();
    let dir = TempDir::new("k8s-run");
    std::fs::create_dir_all(dir.path("etc-loadgen")).unwrap();
    std::fs::create_dir_all(dir.path("reports")).unwrap();
    let config = manifest("configmap.yaml");
    let toml = config["data"]["loadgen.toml"].as_str().unwrap();
    std::fs::write(dir.path("etc-loadgen/loadgen.toml"), toml).unwrap();
    let secret = manifest("secret.yaml");
    let password = secret["stringData"]["password"]
        .as_str()
        .unwrap()
        .to_string();

    let job = manifest("job.yaml");
    let spec = &job["spec"];
    let shards = spec["completions"].as_u64().unwrap();
    let c = &spec["template"]["spec"]["containers"][0];
    let cmd: Vec<String> = [strings(&c["command"]), strings(&c["args"])].concat();
    assert_eq!(cmd[0], "loadgen");
    let cmd = local(&cmd, &dir.0);
    // The start time the loadgen-run ConfigMap gives, a little ahead.
    let start_at = humantime_like(SystemTime::now() + Duration::from_secs(3));
    let children: Vec<_> = (0..shards)
        .map(|i| {
            Command::new(BIN)
                .args(&cmd[1..])
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .env("LOADGEN_START_AT", &start_at)
                .env("LOADGEN_PASSWORD", &password)
                // The fleet of the ConfigMap scaled to this machine, and its broker; the
                // environment overrides the config file, as in a pod.
                .env("LOADGEN_BROKER", m.url())
                .env("LOADGEN_DEVICES", "40")
                .env("LOADGEN_CONNECTIONS", "8")
                .env("LOADGEN_RATE", "4000")
                .env("LOADGEN_DURATION", "2s")
                .env("LOADGEN_METRICS_ADDR", "127.0.0.1:0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a pod's command")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reports: Vec<PathBuf> = (0..shards)
        .map(|i| dir.path(&format!("reports/shard-{i}.json")))
        .collect();
    let mut sent = 0;
    for (i, r) in reports.iter().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
        assert_eq!(n(&v, "shard"), i as u64);
        assert_eq!(n(&v, "shards"), shards);
        assert_eq!(
            v["thresholds"].as_array().unwrap().len(),
            2,
            "the ConfigMap's thresholds"
        );
        sent += n(&v, "points_sent");
    }

    let merge = manifest("merge-job.yaml");
    let mc = &merge["spec"]["template"]["spec"]["containers"][0];
    let mcmd = local(
        &[strings(&mc["command"]), strings(&mc["args"])].concat(),
        &dir.0,
    );
    let out = Command::new(BIN).args(&mcmd[1..]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("reports/merged.json")).unwrap())
            .unwrap();
    assert_eq!(n(&merged, "points_sent"), sent);
    assert_eq!(n(&merged, "devices"), 40);
    assert_eq!(merged["merged"]["shards_missing"], serde_json::json!([]));
    // The merge Job's fleet-wide rate threshold is the full run's (990,000 points/s): this
    // small run fails it, and only it, with exit 99: thresholds judge the merged figures.
    let judged: Vec<(String, bool)> = merged["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["expr"].as_str().unwrap().to_string(),
                t["pass"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        judged
            .iter()
            .any(|(e, p)| e.starts_with("point_rate>=") && !p),
        "{judged:?}"
    );
    assert!(
        judged
            .iter()
            .filter(|(e, _)| !e.starts_with("point_rate"))
            .all(|(_, p)| *p),
        "{judged:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(99),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RFC 3339 in UTC, as `date -u +%Y-%m-%dT%H:%M:%SZ` writes it (with milliseconds).
fn humantime_like(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
