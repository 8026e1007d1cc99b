//! Two backends with one --client-id: the broker keeps one connection per client id, so
//! each reconnect takes the session from the other. Both name it at once and fail.

use std::time::Duration;

use test_support::Mosquitto;

use crate::common::{n, start, validate};

const IN_USE: &str = "error: client id 'backend-x' is in use by another client (two copies running? give each its own --client-id)";

#[test]
fn two_backends_with_one_client_id_both_name_it_in_use_and_fail() {
    let m = Mosquitto::start();
    let args = [
        "--broker",
        &m.url(),
        "--client-id",
        "backend-x",
        "--duration",
        "30s",
    ];
    let mut first = start(&args);
    let mut second = start(&args);
    assert!(
        first.wait_for_line(IN_USE, Duration::from_secs(5)),
        "the first backend did not name it"
    );
    assert!(
        second.wait_for_line(IN_USE, Duration::from_secs(5)),
        "the second backend did not name it"
    );
    for (out, which) in [(first.wait(), "first"), (second.wait(), "second")] {
        out.assert_code(1);
        assert!(
            n(&out.report, "takeovers") >= 1,
            "{which}: {:#}",
            out.report
        );
        assert!(
            out.stderr.contains("warning: likely taken over"),
            "{which}: {}",
            out.stderr
        );
        validate(&out.report);
    }
}

/// Two backends with their default client ids share a broker without a takeover.
#[test]
fn backends_with_default_client_ids_do_not_collide() {
    let m = Mosquitto::start();
    let args = ["--broker", &m.url(), "--duration", "1s"];
    let (first, second) = (start(&args), start(&args));
    for out in [first.wait(), second.wait()] {
        assert_eq!(n(&out.report, "takeovers"), 0, "{:#}", out.report);
        assert_eq!(n(&out.report, "connections_lost"), 0, "{}", out.stderr);
    }
}
