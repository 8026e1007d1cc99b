//! The shipped files hold together: compose file, Dockerfile, configs, README and CI.

use serde_yaml::Value;
use test_support::{workspace_root, Mosquitto};

use crate::common::{n, publish, DEVICE, TOPIC};

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn compose_file_names_services_ports_and_files_that_exist() {
    let compose: Value =
        serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    let services = compose["services"].as_mapping().expect("services");
    let mosq = &compose["services"]["mosquitto"];
    assert!(mosq["image"]
        .as_str()
        .unwrap()
        .starts_with("eclipse-mosquitto:2"));
    let ports: Vec<&str> = mosq["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":1883")), "{ports:?}");
    let volumes: Vec<&str> = mosq["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let conf = volumes
        .iter()
        .find(|v| v.contains("mosquitto.conf"))
        .expect("mosquitto.conf mounted");
    let host_path = conf.split(':').next().unwrap();
    assert!(
        workspace_root().join(host_path).is_file(),
        "{host_path} missing"
    );

    for (name, bin) in [
        ("frontend1", "frontend1-pub"),
        ("frontend2", "frontend2-pub"),
    ] {
        let svc = services
            .get(name)
            .unwrap_or_else(|| panic!("service {name}"));
        let dockerfile = svc["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
        let context = svc["build"]["context"].as_str().unwrap_or(".");
        assert!(workspace_root().join(context).join(dockerfile).is_file());
        let cmd: Vec<&str> = svc["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cmd[0], bin);
        assert!(
            cmd.windows(2)
                .any(|w| w == ["--broker", "mqtt://mosquitto:1883"]),
            "{cmd:?}"
        );
        let deps = format!("{:?}", svc["depends_on"]);
        assert!(
            deps.contains("mosquitto"),
            "{name} must start after mosquitto"
        );
    }
    let backend = &compose["services"]["backend"];
    assert_eq!(backend["command"][0].as_str(), Some("backend-sub"));
    assert!(format!("{:?}", backend["command"]).contains("mqtt://mosquitto:1883"));
    let dockerfile = read("Dockerfile");
    for bin in ["frontend1-pub", "frontend2-pub", "backend-sub"] {
        assert!(
            dockerfile.contains(bin),
            "Dockerfile does not install {bin}"
        );
    }
}

#[test]
fn compose_runs_postgres_job_pub_alone_and_replicated_and_the_backend_with_its_sink() {
    let mut compose: Value =
        serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    // The services share settings through YAML merge keys (<<: *anchor), as compose reads them.
    compose.apply_merge().expect("merge keys");
    let svc = |name: &str| -> &Value {
        let s = &compose["services"][name];
        assert!(!s.is_null(), "service {name}");
        s
    };
    let words = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .expect("a command list")
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    let pg = svc("postgres");
    assert!(pg["image"].as_str().unwrap().starts_with("postgres:"));
    assert!(format!("{:?}", pg["healthcheck"]).contains("pg_isready"));
    let profiles = |v: &Value| format!("{:?}", v["profiles"]);
    for (name, first) in [
        ("job-migrate", ["job-pub", "migrate"]),
        ("job-seed", ["job-pub", "seed"]),
        ("job-pub", ["job-pub", "run"]),
        ("job-pub-many", ["job-pub", "run"]),
        ("backend-sink", ["backend-sub", "--broker"]),
    ] {
        let s = svc(name);
        let cmd = words(&s["command"]);
        assert_eq!(&cmd[..2], first, "{name}: {cmd:?}");
        // The password goes by the environment; no command line holds one.
        assert!(
            !cmd.iter()
                .any(|w| w.contains(":loadgen-local@") || w.contains("PASSWORD")),
            "{name}: {cmd:?}"
        );
        assert!(
            format!("{:?}", s["environment"]).contains("PGPASSWORD"),
            "{name} has no PGPASSWORD"
        );
    }
    assert_eq!(
        compose["services"]["job-pub-many"]["deploy"]["replicas"].as_u64(),
        Some(3)
    );
    assert!(profiles(svc("job-pub-many")).contains("jobs-many"));
    assert!(profiles(svc("job-pub")).contains("jobs"));
    let sink = words(&svc("backend-sink")["command"]);
    assert!(
        sink.windows(2)
            .any(|w| w[0] == "--sink" && w[1].starts_with("postgres://loadgen@postgres:5432/")),
        "{sink:?}"
    );
    assert!(profiles(svc("backend-sink")).contains("sink"));
    assert!(read("Dockerfile").contains("job-pub"));
}

#[test]
fn shipped_config_files_run_as_their_frontend() {
    let m = Mosquitto::start();
    let cfg = workspace_root().join("configs/frontend1.toml");
    let out = publish(&[
        "--config",
        cfg.to_str().unwrap(),
        "--broker",
        &m.url(),
        "--total",
        "3000",
        "--rate",
        "0",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_eq!(
        (r["device_id"].as_str(), r["topic"].as_str()),
        (Some(DEVICE), Some(TOPIC))
    );
    assert_eq!(n(r, "points_sent"), 3000);
    // Both shipped files parse as TOML with only known keys (the binary refuses unknown ones).
    for f in ["configs/frontend1.toml", "configs/frontend2.toml"] {
        let t: toml_like::Table = toml_like::parse(&read(f));
        assert!(t.contains_key("rate") && t.contains_key("batch"), "{f}");
    }
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let readme = read("README.md");
    let ci = read(".ci/run");
    let cmd = readme
        .lines()
        .find(|l| l.contains("scripts/test"))
        .expect("README names the test command")
        .trim()
        .trim_start_matches("$ ")
        .to_string();
    assert!(
        ci.lines().any(|l| l.trim() == cmd),
        ".ci/run does not run `{cmd}`"
    );
}

/// Minimal key lookup for the config files, without another dependency.
mod toml_like {
    pub type Table = std::collections::HashMap<String, String>;
    pub fn parse(text: &str) -> Table {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }
}
