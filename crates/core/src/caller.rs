//! Who is calling, and who may call what.

use portcullis_protocol::Actor;

/// The verified identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential.
    Anonymous,
    /// The holder of the local operator token.
    Operator,
}

impl Caller {
    /// How the caller appears in events.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Anonymous => Actor::Anonymous,
            Caller::Operator => Actor::Operator,
        }
    }
}

/// What a command demands of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone, with or without a credential (a presented credential must still be valid).
    Anyone,
    /// The operator.
    Operator,
}

impl Requirement {
    /// Name used by `SYS.COMMANDS` and `protocol/commands/*.md`.
    pub const fn name(self) -> &'static str {
        match self {
            Requirement::Anyone => "anyone",
            Requirement::Operator => "operator",
        }
    }

    /// Whether `caller` satisfies the requirement.
    pub fn admits(self, caller: &Caller) -> bool {
        match self {
            Requirement::Anyone => true,
            Requirement::Operator => matches!(caller, Caller::Operator),
        }
    }
}

/// Which rate limiter guards a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// Cheap reads and liveness.
    Cheap,
    /// Operator tooling.
    Operator,
}

impl RateClass {
    /// Name used by `SYS.COMMANDS`.
    pub const fn name(self) -> &'static str {
        match self {
            RateClass::Cheap => "cheap",
            RateClass::Operator => "operator",
        }
    }
}
