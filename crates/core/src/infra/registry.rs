//! The command registry: data that names every command, who may call it, which rate limiter
//! guards it, whether it is logged, and its handler.

use crate::base::caller::{RateClass, Requirement};
use crate::base::error::{sanitize_serde_message, CommandError};
use crate::infra::tail::TailStream;
use crate::Ctx;
use futures::future::BoxFuture;
use portcullis_protocol::commands::log::TailFrame;
use portcullis_protocol::commands::sys::CommandInfo;
use portcullis_protocol::{ErrorCode, PROTOCOL_VERSION};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
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

/// Writes the JSON Schema of a type into a generator: a `$ref` into the generator's definitions,
/// or the schema itself for a type that is always inlined.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// How a command's params and result are described in `protocol/commands.json`.
#[derive(Clone, Copy)]
pub struct Schemas {
    /// What the server accepts as `params`.
    pub params: SchemaFn,
    /// What the server sends as `data`: for a streaming command, one line's `data`.
    pub result: SchemaFn,
    /// Whether the command answers with a stream of lines (`LOG.TAIL`).
    pub streaming: bool,
}

impl Schemas {
    fn of<P: JsonSchema, R: JsonSchema>(streaming: bool) -> Schemas {
        Schemas {
            params: SchemaGenerator::subschema_for::<P>,
            result: SchemaGenerator::subschema_for::<R>,
            streaming,
        }
    }
}

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
    /// Its params and result types, as JSON Schemas.
    pub schemas: Schemas,
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
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, CommandError>> + Send + 'static,
    {
        let handler = typed(f, serialised::<R>);
        CommandSpec::with_handler(name, caller, rate, handler, Schemas::of::<P, R>(false))
    }

    /// A logged command that answers with a stream of [`TailFrame`] lines.
    pub fn streaming<P, F, Fut>(
        name: &'static str,
        caller: Requirement,
        rate: RateClass,
        f: F,
    ) -> CommandSpec
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<TailStream, CommandError>> + Send + 'static,
    {
        let handler = typed(f, |s| Ok(Output::Stream(s)));
        let schemas = Schemas::of::<P, TailFrame>(true);
        CommandSpec::with_handler(name, caller, rate, handler, schemas)
    }

    fn with_handler(
        name: &'static str,
        caller: Requirement,
        rate: RateClass,
        handler: Handler,
        schemas: Schemas,
    ) -> CommandSpec {
        CommandSpec {
            name,
            caller,
            rate,
            logged: true,
            enrolment: false,
            read_only: false,
            handler,
            schemas,
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

    /// The machine-readable description of every command: the document committed as
    /// `protocol/commands.json` (its format is described in protocol/README.md). Params are
    /// described as the server reads them, results as it writes them; every `$ref` points into
    /// the top-level `$defs`. Fails, naming them, when two different types would share a
    /// definition name.
    pub fn describe(&self) -> Result<Value, String> {
        let mut params = SchemaSettings::draft2020_12()
            .for_deserialize()
            .into_generator();
        let mut results = SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator();
        let mut commands = Vec::with_capacity(self.commands.len());
        for spec in self.commands.values() {
            let info = spec.info();
            commands.push(json!({
                "name": info.name,
                "caller": info.caller,
                "rate_class": info.rate_class,
                "logged": info.logged,
                "read_only": info.read_only,
                "streaming": spec.schemas.streaming,
                "params": tidy((spec.schemas.params)(&mut params).to_value()),
                "result": tidy((spec.schemas.result)(&mut results).to_value()),
            }));
        }
        let mut defs = Map::new();
        let mut collisions = Vec::new();
        for generated in [
            params.take_definitions(false),
            results.take_definitions(false),
        ] {
            collisions.extend(renamed_definitions(&generated));
            for (name, schema) in generated {
                let schema = tidy(schema);
                match defs.get(&name) {
                    Some(seen) if *seen != schema => collisions.push(name),
                    Some(_) => {}
                    None => {
                        defs.insert(name, schema);
                    }
                }
            }
        }
        if !collisions.is_empty() {
            collisions.sort();
            collisions.dedup();
            return Err(format!(
                "two different types share each of these schema names: {}; \
                 give them distinct names with #[schemars(rename = \"...\")]",
                collisions.join(", ")
            ));
        }
        let mut codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        codes.sort_unstable();
        Ok(json!({
            "protocol": PROTOCOL_VERSION,
            "error_codes": codes,
            "commands": commands,
            "$defs": defs,
        }))
    }
}

/// Names that schemars made unique by appending a number because another type already had the
/// name (`Name2` beside `Name`): two types with one name.
fn renamed_definitions(defs: &Map<String, Value>) -> Vec<String> {
    defs.keys()
        .filter_map(|name| {
            let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
            (base.len() < name.len() && defs.contains_key(base)).then(|| base.to_owned())
        })
        .collect()
}

/// Drops what the description does not use: `title` (the first line of a doc comment, which
/// schemars copies; `description` keeps the text) and `$schema`, at every depth of a schema.
fn tidy(mut schema: Value) -> Value {
    fn walk(v: &mut Value, is_schema: bool) {
        match v {
            Value::Object(m) => {
                if is_schema {
                    m.remove("title");
                    m.remove("$schema");
                }
                for (k, child) in m.iter_mut() {
                    // Under these keys are maps of schemas or lists of schemas; under the
                    // others (`enum`, `const`, `default`, `required`) are plain values.
                    match k.as_str() {
                        "properties" | "$defs" => {
                            if let Value::Object(props) = child {
                                for p in props.values_mut() {
                                    walk(p, true);
                                }
                            }
                        }
                        "items" | "additionalProperties" | "oneOf" | "anyOf" | "allOf" => {
                            walk(child, true)
                        }
                        _ => {}
                    }
                }
            }
            Value::Array(a) if is_schema => {
                for child in a {
                    walk(child, true);
                }
            }
            _ => {}
        }
    }
    walk(&mut schema, true);
    schema
}
