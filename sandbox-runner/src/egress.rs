//! The egress proxy's policy for one sandbox (issue 15, in progress; the proxy
//! is not wired to sandboxes yet): a connection is allowed only to a
//! destination the job or session asked for *and* the tenant's
//! `glassbox.egress` allows, decided again for every connection with the
//! bundle digest recorded.

use glassbox_domain::request::EgressTarget;
use glassbox_egress::{Destination, Policy as EgressPolicy, Verdict};
use glassbox_policies::{Policy, PolicyEngine};
use serde_json::json;
use std::sync::Arc;

pub struct TenantEgress {
    pub engine: Arc<PolicyEngine>,
    pub tenant: String,
    /// What the job or session asked for (changeable at runtime for sessions).
    pub requested: Vec<EgressTarget>,
}

impl EgressPolicy for TenantEgress {
    fn decide(&self, dest: &Destination) -> Verdict {
        if !self
            .requested
            .iter()
            .any(|t| t.matches(&dest.host, dest.port))
        {
            return Verdict {
                allow: false,
                rule: "not among the destinations this sandbox asked for".into(),
                allow_private: false,
                decided_by: None,
            };
        }
        let input = json!({"tenant": self.tenant, "host": dest.host, "port": dest.port});
        let d = self.engine.evaluate(Policy::Egress, &input);
        Verdict {
            allow: d.allow,
            rule: d.rule.clone().unwrap_or_else(|| d.reasons.join("; ")),
            allow_private: d.allow_private,
            decided_by: Some(format!("{}@sha256:{}", d.policy, d.bundle_digest.to_hex())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tenant: &str, requested: &[&str]) -> TenantEgress {
        TenantEgress {
            engine: Arc::new(
                PolicyEngine::new(&glassbox_policies::Bundle::builtin()).expect("bundle"),
            ),
            tenant: tenant.into(),
            requested: requested
                .iter()
                .map(|r| EgressTarget::parse(r).expect("target"))
                .collect(),
        }
    }

    fn d(host: &str, port: u16) -> Destination {
        Destination {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn a_connection_needs_both_the_request_and_the_tenants_rule() {
        let p = policy(
            "acme",
            &[
                "api.example.com:443",
                "*.pythonhosted.org:443",
                "evil.example:443",
            ],
        );
        let v = p.decide(&d("api.example.com", 443));
        assert!(v.allow && !v.allow_private, "{v:?}");
        assert_eq!(v.rule, "api.example.com:[443]");
        assert!(
            v.decided_by
                .as_deref()
                .is_some_and(|b| b.starts_with("glassbox.egress@sha256:"))
        );
        let v = p.decide(&d("files.pythonhosted.org", 443));
        assert!(v.allow, "{v:?}");
        // Asked for, but the tenant does not allow it.
        let v = p.decide(&d("evil.example", 443));
        assert!(!v.allow);
        assert!(v.rule.contains("not allowed for tenant acme"), "{v:?}");
        // Allowed for the tenant, but this sandbox did not ask for it.
        let v = p.decide(&d("outside.test", 8443));
        assert!(!v.allow);
        assert_eq!(v.rule, "not among the destinations this sandbox asked for");
        // A rule that allows private addresses says so.
        let v = policy("acme", &["outside.test:8443"]).decide(&d("outside.test", 8443));
        assert!(v.allow && v.allow_private, "{v:?}");
        // Another tenant, the same request: nothing.
        let v = policy("globex", &["api.example.com:443"]).decide(&d("api.example.com", 443));
        assert!(!v.allow);
    }
}
