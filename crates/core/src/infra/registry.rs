//! The command registry: data that names every command, who may call it, which rate limiter
//! guards it, whether it is logged, and its handler.

use crate::base::caller::{RateClass, Requirement};
use crate::base::error::{sanitize_serde_message, CommandError};
use crate::infra::tail::TailStream;
use crate::Ctx;
use futures::future::BoxFuture;
use portcullis_protocol::commands::sys::CommandInfo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// What a handler produces.
pub enum Output {
    /// One result.
    Data(Value),
    /// A stream of lines (`LOG.TAIL`).
    Stream(TailStream),
}

/// A type-erased handler: params JSON in, output or error out.
pub type Handler =
    Arc<dyn Fn(Ctx, Value) -> BoxFuture<'static, Result<Output, CommandError>> + Send + Sync>;

/// One registry entry.
#[derive(Clone)]
pub struct CommandSpec {
    /// Wire name, e.g. `SYS.PING`.
    pub name: &'static str,
    /// Who may call it.
    pub caller: Requirement,
    /// Which rate limiter guards it.
    pub rate: RateClass,
    /// Whether its outcomes go to the event log (only `SYS.PING` is exempt).
    pub logged: bool,
    /// Whether an enrolment-only session may run it.
    pub enrolment: bool,
    /// Whether it only reads: its answer then waits for no disk flush of its own event (the
    /// group commit makes that durable within [`portcullis_store::LAZY_FLUSH`]), only for the
    /// durability of any table write it may have observed ([`portcullis_store::Store::sync_state`]).
    pub read_only: bool,
    /// The handler.
    pub handler: Handler,
}

impl CommandSpec {
    /// A logged command whose handler takes typed params `P` and returns a serialisable `R`.
    pub fn new<P, R, F, Fut>(
        name: &'static str,
        caller: Requirement,
        rate: RateClass,
        f: F,
    ) -> CommandSpec
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, CommandError>> + Send + 'static,
    {
        CommandSpec::with_handler(name, caller, rate, typed(f, serialised::<R>))
    }

    /// A logged command that answers with a stream.
    pub fn streaming<P, F, Fut>(
        name: &'static str,
        caller: Requirement,
        rate: RateClass,
        f: F,
    ) -> CommandSpec
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<TailStream, CommandError>> + Send + 'static,
    {
        CommandSpec::with_handler(name, caller, rate, typed(f, |s| Ok(Output::Stream(s))))
    }

    fn with_handler(
        name: &'static str,
        caller: Requirement,
        rate: RateClass,
        handler: Handler,
    ) -> CommandSpec {
        CommandSpec {
            name,
            caller,
            rate,
            logged: true,
            enrolment: false,
            read_only: false,
            handler,
        }
    }

    /// Lets an enrolment-only session run the command.
    pub fn enrolment_allowed(mut self) -> Self {
        self.enrolment = true;
        self
    }

    /// Marks the command as changing nothing (see [`CommandSpec::read_only`]).
    pub fn reads_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Exempts the command from the event log.
    pub fn unlogged(mut self) -> Self {
        self.logged = false;
        self
    }

    /// The entry as `SYS.COMMANDS` lists it.
    pub fn info(&self) -> CommandInfo {
        CommandInfo {
            name: self.name.to_owned(),
            caller: self.caller.name().to_owned(),
            rate_class: self.rate.name().to_owned(),
            logged: self.logged,
            read_only: self.read_only,
        }
    }
}

/// Erases a typed handler: parses its params, runs it, and turns its result into [`Output`].
fn typed<P, T, F, Fut>(f: F, output: fn(T) -> Result<Output, CommandError>) -> Handler
where
    P: DeserializeOwned + Send + 'static,
    T: Send + 'static,
    F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, CommandError>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |ctx, params| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let p = parse_params::<P>(params)?;
            output(f(ctx, p).await?)
        })
    })
}

fn serialised<R: Serialize>(r: R) -> Result<Output, CommandError> {
    serde_json::to_value(r).map(Output::Data).map_err(|e| {
        tracing::error!(error = %e, "result does not serialise");
        CommandError::internal()
    })
}

/// Params must be an object (absent means `{}`), and unknown members are refused by the params
/// types themselves (`deny_unknown_fields`).
fn parse_params<P: DeserializeOwned>(params: Value) -> Result<P, CommandError> {
    let params = match params {
        Value::Null => Value::Object(Default::default()),
        Value::Object(m) => Value::Object(m),
        _ => return Err(CommandError::invalid_params("params must be a JSON object")),
    };
    serde_json::from_value(params)
        .map_err(|e| CommandError::invalid_params(sanitize_serde_message(&e.to_string())))
}

/// Every command, by name.
#[derive(Clone, Default)]
pub struct Registry {
    commands: BTreeMap<&'static str, CommandSpec>,
}

impl Registry {
    /// Adds commands. A duplicate name is a programming error caught by the registry test.
    pub fn with(mut self, specs: impl IntoIterator<Item = CommandSpec>) -> Self {
        for s in specs {
            let previous = self.commands.insert(s.name, s);
            debug_assert!(previous.is_none(), "duplicate command");
        }
        self
    }

    /// Looks a command up.
    pub fn get(&self, name: &str) -> Option<&CommandSpec> {
        self.commands.get(name)
    }

    /// Every entry, sorted by name.
    pub fn list(&self) -> Vec<CommandInfo> {
        self.commands.values().map(CommandSpec::info).collect()
    }

    /// How many commands there are.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}
