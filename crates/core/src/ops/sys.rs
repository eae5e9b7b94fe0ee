//! `SYS.PING`, `SYS.INFO`, `SYS.COMMANDS`.

use crate::base::caller::{RateClass, Requirement};
use crate::base::clock::rfc3339_ms;
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::sys::{self, Commands, Info, NoParams, Pong};

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(sys::PING, Requirement::Anyone, RateClass::Cheap, ping).unlogged(),
        CommandSpec::new(sys::INFO, Requirement::Anyone, RateClass::Cheap, info).reads_only(),
        CommandSpec::new(
            sys::COMMANDS,
            Requirement::Anyone,
            RateClass::Cheap,
            commands,
        )
        .reads_only(),
    ]
}

/// `SYS.PING` — anyone; not logged, so liveness probes do not flood the log. Always
/// `{"pong": true}`.
async fn ping(_ctx: Ctx, _p: NoParams) -> Result<Pong, CommandError> {
    Ok(Pong { pong: true })
}

/// `SYS.INFO` — anyone. Version, node id, start time, uptime, log head.
async fn info(ctx: Ctx, _p: NoParams) -> Result<Info, CommandError> {
    let app = &ctx.app;
    Ok(Info {
        name: "portcullis".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: portcullis_protocol::PROTOCOL_VERSION,
        node_id: app.node_id.clone(),
        started_at: rfc3339_ms(app.started_at),
        uptime_s: app.uptime_s(),
        log_head_seq: app.log.head_seq(),
        log_first_seq: app.log.first_seq(),
    })
}

/// `SYS.COMMANDS` — anyone. The registry, sorted by name.
async fn commands(ctx: Ctx, _p: NoParams) -> Result<Commands, CommandError> {
    Ok(Commands {
        commands: ctx.app.registry.list(),
    })
}
