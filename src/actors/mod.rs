//! The actors that own all server state. Each file holds one actor, its messages and its tests.
//!
//! Supervision: every actor is started under [`actix::Supervisor`]. A panic inside a message
//! handler is caught by [`guard`], logged at ERROR with the actor's name, answered with a
//! "restarting" error (HTTP 503), and the actor is stopped so the supervisor restarts it with its
//! state rebuilt in `Supervised::restarting`.

pub mod bundle_importer;
pub mod checkpoint_store;
pub mod deployer;
pub mod emergency_writer;
pub mod executor;
pub mod executor_pool;
pub mod minio_supervisor;
pub mod sample_store;
pub mod stop_registry;
pub mod storage_gateway;

use actix::prelude::*;
use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Asks an actor to stop so its supervisor restarts it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restart;

/// Test-only fault injection: the next message handled by the actor panics. Only honoured when
/// the server was started with `COMPOX_TEST_FAULTS=1`.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct InjectFault;

/// The `Restart` and `InjectFault` handlers every supervised actor has. With a field name, an
/// injected fault sets that flag (the next handled message panics); without, faults are ignored.
macro_rules! supervision_handlers {
    (@restart $actor:ty) => {
        impl actix::Handler<$crate::actors::Restart> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::actors::Restart, ctx: &mut Self::Context) {
                actix::ActorContext::stop(ctx);
            }
        }
    };
    ($actor:ty) => {
        $crate::actors::supervision_handlers!(@restart $actor);
        impl actix::Handler<$crate::actors::InjectFault> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::actors::InjectFault, _: &mut Self::Context) {}
        }
    };
    ($actor:ty, $flag:ident) => {
        $crate::actors::supervision_handlers!(@restart $actor);
        impl actix::Handler<$crate::actors::InjectFault> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::actors::InjectFault, _: &mut Self::Context) {
                if $crate::actors::faults_enabled() {
                    self.$flag = true;
                }
            }
        }
    };
}
pub(crate) use supervision_handlers;

pub fn faults_enabled() -> bool {
    std::env::var("COMPOX_TEST_FAULTS").is_ok_and(|v| v == "1")
}

/// Text of a caught panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs a handler's future; a panic becomes `on_panic()` and a restart request.
pub fn guard<T, F>(
    actor: &'static str,
    restart: Recipient<Restart>,
    on_panic: fn(&'static str) -> T,
    fut: F,
) -> ResponseFuture<T>
where
    T: 'static,
    F: Future<Output = T> + 'static,
{
    Box::pin(async move {
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(v) => v,
            Err(payload) => {
                tracing::error!(actor, panic = %panic_message(&*payload), "actor panicked; restarting it");
                restart.do_send(Restart);
                on_panic(actor)
            }
        }
    })
}
