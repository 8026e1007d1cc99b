//! Routing points by device to the frontend that owns the device.
//!
//! Exact device routes (`--route DEVICE=FRONTEND`) win over prefix routes (`--route-prefix
//! PREFIX=FRONTEND`, longest prefix first); a device that matches neither is unrouted. A
//! device's route is decided once, so a frontend never receives another frontend's device.

use std::collections::HashMap;

/// Index of a frontend in [`Router::frontends`].
pub type FrontendId = usize;

#[derive(Debug, Clone, Default)]
pub struct Router {
    frontends: Vec<String>,
    exact: HashMap<String, FrontendId>,
    /// Longest prefix first.
    prefixes: Vec<(String, FrontendId)>,
}

impl Router {
    /// Builds a router from `DEVICE=FRONTEND` and `PREFIX=FRONTEND` pairs.
    pub fn new(exact: &[(String, String)], prefixes: &[(String, String)]) -> Router {
        let mut r = Router::default();
        for (device, fe) in exact {
            let id = r.frontend_id(fe);
            r.exact.insert(device.clone(), id);
        }
        for (prefix, fe) in prefixes {
            let id = r.frontend_id(fe);
            r.prefixes.push((prefix.clone(), id));
        }
        r.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        r
    }

    fn frontend_id(&mut self, name: &str) -> FrontendId {
        match self.frontends.iter().position(|f| f == name) {
            Some(i) => i,
            None => {
                self.frontends.push(name.to_string());
                self.frontends.len() - 1
            }
        }
    }

    pub fn frontends(&self) -> &[String] {
        &self.frontends
    }

    pub fn route(&self, device: &str) -> Option<FrontendId> {
        if let Some(id) = self.exact.get(device) {
            return Some(*id);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| device.starts_with(p.as_str()))
            .map(|(_, id)| *id)
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "'{s}' is not KEY=FRONTEND, e.g. frontend1=frontend1"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn exact_routes_beat_prefixes_and_the_rest_is_unrouted() {
        let r = Router::new(
            &pairs(&[("frontend1_special", "frontend2")]),
            &pairs(&[
                ("frontend1", "frontend1"),
                ("frontend2", "frontend2"),
                ("frontend1_ultra", "ultra"),
            ]),
        );
        let name = |d: &str| r.route(d).map(|i| r.frontends()[i].as_str());
        assert_eq!(name("frontend1_special"), Some("frontend2"));
        assert_eq!(name("frontend1_ultra_high_perf_device"), Some("ultra"));
        assert_eq!(name("frontend1_other"), Some("frontend1"));
        assert_eq!(name("frontend2_ultra_high_perf_device"), Some("frontend2"));
        assert_eq!(name("sensor_9"), None);
    }

    #[test]
    fn pairs_need_both_sides() {
        assert_eq!(parse_pair("a=b"), Ok(("a".into(), "b".into())));
        assert!(parse_pair("a=").is_err());
        assert!(parse_pair("ab").is_err());
    }
}
