//! The command boundary: arguments in, one reply out, and no panic past this point.
//! A panic unwinding into redis-server would abort it, so it becomes an error reply.

use super::ffi::{bytes_of, Ctx, RawString};
use super::reply;
use super::stats::{self, Stat};
use crate::rules::CouponError;
use redis_module::raw;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The arguments of one call, command name at 0.
pub struct Argv<'a> {
    raw: &'a [RawString],
}

impl<'a> Argv<'a> {
    /// The raw string at `index`, as the client sent it.
    pub fn raw(&self, index: usize) -> Result<RawString, CouponError> {
        self.raw.get(index).copied().ok_or(CouponError::Arity)
    }

    pub fn bytes(&self, index: usize) -> Result<&'a [u8], CouponError> {
        self.raw(index).map(|s| unsafe { bytes_of(s) })
    }

    /// Calls `f` with the bytes of all arguments after the command name, gathered on the
    /// stack for the usual counts (no allocation per call).
    pub fn with_tail<R>(&self, f: impl FnOnce(&[&'a [u8]]) -> R) -> R {
        const ON_STACK: usize = 8;
        let tail = self.raw.get(1..).unwrap_or_default();
        let bytes = |s: &RawString| unsafe { bytes_of(*s) };
        if tail.len() <= ON_STACK {
            let mut buffer: [&[u8]; ON_STACK] = [&[]; ON_STACK];
            for (slot, arg) in buffer.iter_mut().zip(tail) {
                *slot = bytes(arg);
            }
            f(&buffer[..tail.len()])
        } else {
            f(&tail.iter().map(bytes).collect::<Vec<_>>())
        }
    }
}

pub type Handler = fn(Ctx, &Argv<'_>) -> Result<(), CouponError>;

/// Runs `handler`; a refusal or a panic becomes an error reply and counts as an error.
pub fn serve(
    ctx: Ctx,
    argv: *mut RawString,
    argc: c_int,
    command: &str,
    handler: Handler,
) -> c_int {
    let raw = match usize::try_from(argc) {
        Ok(len) if !argv.is_null() => unsafe { std::slice::from_raw_parts(argv, len) },
        _ => &[],
    };
    let failure = match guarded(|| handler(ctx, &Argv { raw })) {
        Ok(Ok(())) => None,
        Ok(Err(refusal)) => Some(format!("{} {refusal}", refusal.code())),
        Err(panic) => Some(format!("ERR internal error in {command}: {panic}")),
    };
    if let Some(message) = failure {
        stats::count(Stat::Errors);
        reply::error(ctx, &message);
    }
    raw::REDISMODULE_OK as c_int
}

/// Runs `f`, turning a panic into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[test]
    fn a_panic_becomes_its_message() {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let caught = guarded(|| -> i32 { panic!("bad {}", 42) });
        let caught_str = guarded(|| -> i32 { panic!("static") });
        std::panic::set_hook(quiet);
        assert_eq!(caught, Err("bad 42".to_string()));
        assert_eq!(caught_str, Err("static".to_string()));
        assert_eq!(guarded(|| 7), Ok(7));
    }
}
