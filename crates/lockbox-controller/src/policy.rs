//! Grant policy: which caller may ask for which grants. Pure functions, so every refusal
//! reason is unit-tested; a refusal names the rule that refused.

use std::time::Duration;

use lockbox_proto::v1::GrantOp;

/// A grant operation as policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The source keeps the key.
    Copy,
    /// The source tombstones the key.
    Move,
    /// A standing backup copy.
    Replicate,
}

impl Op {
    /// The operation a grant body names, if it is one (not `unspecified`).
    pub fn from_grant_op(op: GrantOp) -> Option<Op> {
        match op {
            GrantOp::Copy => Some(Op::Copy),
            GrantOp::Move => Some(Op::Move),
            GrantOp::Replicate => Some(Op::Replicate),
            GrantOp::Unspecified => None,
        }
    }

    /// The grant body's value for this operation.
    pub fn grant_op(self) -> GrantOp {
        match self {
            Op::Copy => GrantOp::Copy,
            Op::Move => GrantOp::Move,
            Op::Replicate => GrantOp::Replicate,
        }
    }

    /// Parses the config spelling (the one table of names: `lockbox_crypto::OP_NAMES`).
    pub fn parse(s: &str) -> Option<Op> {
        lockbox_crypto::parse_op(s).and_then(Op::from_grant_op)
    }

    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        lockbox_crypto::op_name(self.grant_op() as i32)
    }
}

/// `*` (anything), `prefix*`, or an exact string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Wraps a pattern as written in the config.
    pub fn new(p: &str) -> Pattern {
        Pattern(p.to_string())
    }

    /// True when `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => s.starts_with(prefix),
            None => self.0 == s,
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `[[policy]]` block.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Position in the file, to name the rule in refusals.
    pub index: usize,
    /// The caller's SPIFFE id (pattern).
    pub caller: Pattern,
    /// Allowed operations.
    pub ops: Vec<Op>,
    /// Allowed source node patterns.
    pub from: Vec<Pattern>,
    /// Allowed destination node patterns.
    pub to: Vec<Pattern>,
    /// Longest grant validity.
    pub max_ttl: Duration,
    /// Most key ids per grant.
    pub max_keys: usize,
}

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// The caller's SPIFFE id.
    pub caller: &'a str,
    /// The operation.
    pub op: Op,
    /// Source node.
    pub from: &'a str,
    /// Destination node.
    pub to: &'a str,
    /// Requested validity; `None` takes the rule's maximum.
    pub ttl: Option<Duration>,
    /// Number of key ids.
    pub keys: usize,
}

/// The names [`Refusal::rule`] takes.
pub const RULES: [&str; 6] = [
    "caller",
    "op",
    "source",
    "destination",
    "max_keys",
    "max_ttl",
];

/// Why the policy said no: the check that refused (a fixed name, for metrics) and the message
/// for the caller and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which check refused: `caller` (no rule for this caller), `op`, `source`,
    /// `destination`, `max_keys` or `max_ttl`.
    pub rule: &'static str,
    /// What the caller is told, naming the policy entry.
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Finds a rule that allows `ask` and returns the validity to grant; otherwise the reason,
/// naming the rule (the first one for this caller) that refused.
pub fn decide(rules: &[Rule], ask: &Ask<'_>) -> Result<Duration, Refusal> {
    let mut first_refusal = None;
    for rule in rules.iter().filter(|r| r.caller.matches(ask.caller)) {
        match check(rule, ask) {
            Ok(ttl) => return Ok(ttl),
            Err((check, why)) => {
                if first_refusal.is_none() {
                    first_refusal = Some(Refusal {
                        rule: check,
                        message: format!(
                            "refused by policy[{}] (caller {}): {why}",
                            rule.index, rule.caller
                        ),
                    });
                }
            }
        }
    }
    Err(first_refusal.unwrap_or_else(|| Refusal {
        rule: "caller",
        message: format!("refused: no policy rule allows caller {}", ask.caller),
    }))
}

fn check(rule: &Rule, ask: &Ask<'_>) -> Result<Duration, (&'static str, String)> {
    if !rule.ops.contains(&ask.op) {
        let allowed: Vec<&str> = rule.ops.iter().map(Op::as_str).collect();
        return Err((
            "op",
            format!(
                "op {} not allowed (allowed: {})",
                ask.op.as_str(),
                allowed.join(", ")
            ),
        ));
    }
    if !rule.from.iter().any(|p| p.matches(ask.from)) {
        return Err(("source", format!("source node {} not allowed", ask.from)));
    }
    if !rule.to.iter().any(|p| p.matches(ask.to)) {
        return Err((
            "destination",
            format!("destination node {} not allowed", ask.to),
        ));
    }
    if ask.keys > rule.max_keys {
        return Err((
            "max_keys",
            format!("{} keys exceed max_keys {}", ask.keys, rule.max_keys),
        ));
    }
    match ask.ttl {
        Some(t) if t > rule.max_ttl => Err((
            "max_ttl",
            format!(
                "ttl {} exceeds max_ttl {}",
                humantime::format_duration(t),
                humantime::format_duration(rule.max_ttl)
            ),
        )),
        Some(t) => Ok(t),
        None => Ok(rule.max_ttl),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                index: 0,
                caller: Pattern::new("spiffe://d/orchestrator/cinder"),
                ops: vec![Op::Copy, Op::Move],
                from: vec![Pattern::new("host-*")],
                to: vec![Pattern::new("*")],
                max_ttl: Duration::from_secs(900),
                max_keys: 10,
            },
            Rule {
                index: 1,
                caller: Pattern::new("spiffe://d/admin/*"),
                ops: vec![Op::Replicate],
                from: vec![Pattern::new("*")],
                to: vec![Pattern::new("backup-1")],
                max_ttl: Duration::from_secs(60),
                max_keys: 1,
            },
        ]
    }

    fn ask(caller: &str, op: Op) -> Ask<'_> {
        Ask {
            caller,
            op,
            from: "host-a",
            to: "host-b",
            ttl: None,
            keys: 1,
        }
    }

    #[test]
    fn allows_within_policy() {
        assert_eq!(
            decide(&rules(), &ask("spiffe://d/orchestrator/cinder", Op::Move)).unwrap(),
            Duration::from_secs(900)
        );
        let mut a = ask("spiffe://d/admin/alice", Op::Replicate);
        a.to = "backup-1";
        a.ttl = Some(Duration::from_secs(30));
        assert_eq!(decide(&rules(), &a).unwrap(), Duration::from_secs(30));
    }

    #[test]
    fn refusals_name_the_rule_and_the_reason() {
        let r = rules();
        let refused = |a: &Ask<'_>, rule: &str| {
            let e = decide(&r, a).unwrap_err();
            assert_eq!(e.rule, rule, "{e}");
            assert!(RULES.contains(&e.rule));
            e.message
        };
        let e = refused(&ask("spiffe://d/orchestrator/cinder", Op::Replicate), "op");
        assert!(e.contains("policy[0]") && e.contains("op replicate"), "{e}");
        let mut a = ask("spiffe://d/orchestrator/cinder", Op::Copy);
        a.from = "db-1";
        let e = refused(&a, "source");
        assert!(e.contains("source node db-1"), "{e}");
        a.from = "host-a";
        a.keys = 11;
        assert!(refused(&a, "max_keys").contains("max_keys 10"));
        a.keys = 1;
        a.ttl = Some(Duration::from_secs(3600));
        assert!(refused(&a, "max_ttl").contains("max_ttl"));
        let e = refused(&ask("spiffe://d/orchestrator/nova", Op::Copy), "caller");
        assert!(e.contains("no policy rule allows caller"), "{e}");
        let e = refused(&ask("spiffe://d/admin/bob", Op::Replicate), "destination");
        assert!(
            e.contains("policy[1]") && e.contains("destination node host-b"),
            "{e}"
        );
    }

    #[test]
    fn patterns() {
        assert!(Pattern::new("*").matches("anything"));
        assert!(Pattern::new("host-*").matches("host-"));
        assert!(!Pattern::new("host-*").matches("hos"));
        assert!(Pattern::new("exact").matches("exact"));
        assert!(!Pattern::new("exact").matches("exactly"));
    }
}
