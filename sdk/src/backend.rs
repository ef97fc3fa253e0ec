//! The two ways to run the rules: the module's commands, or the Lua script over the same keys.

use crate::keys::CouponKeys;
use crate::Error;
use redis::{Cmd, Script};
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// Which server-side implementation the client calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// `COUPON.*` commands of the loaded module: fastest.
    Module,
    /// The bundled Lua script (EVALSHA, EVAL on NOSCRIPT) for servers that cannot load
    /// modules. Same outcomes, seqs and event entries; the two can be mixed on one coupon.
    Script,
}

/// The script, in one file; its SHA1 is computed once.
pub(crate) static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(crate::SCRIPT_SOURCE));

/// A write to send: the command, and what to send instead if the server lacks the script.
pub(crate) struct Call {
    pub command: Cmd,
    pub on_noscript: Option<Cmd>,
}

/// The arguments of an issue, validated.
pub(crate) struct IssueArgs<'a> {
    pub coupon: &'a [u8],
    pub user: &'a [u8],
    pub limit: u64,
    pub window: Option<(u64, u64)>,
}

/// How each backend spells a write.
pub(crate) trait Dialect {
    fn issue(&self, args: &IssueArgs<'_>) -> Result<Call, Error>;
    fn revoke(&self, coupon: &[u8], user: &[u8]) -> Result<Call, Error>;
}

impl Dialect for Backend {
    fn issue(&self, args: &IssueArgs<'_>) -> Result<Call, Error> {
        match self {
            Backend::Module => {
                let mut command = redis::cmd("COUPON.ISSUE");
                command.arg(args.coupon).arg(args.user).arg(args.limit);
                if let Some((start, end)) = args.window {
                    command.arg("WINDOW").arg(start).arg(end);
                }
                Ok(Call {
                    command,
                    on_noscript: None,
                })
            }
            Backend::Script => script_call(args.coupon, |command| {
                command
                    .arg("issue")
                    .arg(args.coupon)
                    .arg(args.user)
                    .arg(args.limit);
                if let Some((start, end)) = args.window {
                    command.arg(start).arg(end);
                }
            }),
        }
    }

    fn revoke(&self, coupon: &[u8], user: &[u8]) -> Result<Call, Error> {
        match self {
            Backend::Module => {
                let mut command = redis::cmd("COUPON.REVOKE");
                command.arg(coupon).arg(user);
                Ok(Call {
                    command,
                    on_noscript: None,
                })
            }
            Backend::Script => script_call(coupon, |command| {
                command.arg("revoke").arg(coupon).arg(user);
            }),
        }
    }
}

/// `EVALSHA sha 3 holders meta events <argv>`, with `EVAL <source> …` as the fallback.
/// Only the script names the sibling keys; the module derives them itself.
fn script_call(coupon: &[u8], argv: impl Fn(&mut Cmd)) -> Result<Call, Error> {
    let keys = CouponKeys::of(coupon)?;
    let build = |verb: &str, body: &str| {
        let mut command = redis::cmd(verb);
        command
            .arg(body)
            .arg(3)
            .arg(&keys.holders)
            .arg(&keys.meta)
            .arg(&keys.events);
        argv(&mut command);
        command
    };
    Ok(Call {
        command: build("EVALSHA", SCRIPT.get_hash()),
        on_noscript: Some(build("EVAL", crate::SCRIPT_SOURCE)),
    })
}
