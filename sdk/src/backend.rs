//! The two ways to run the rules: the module's commands, or the Lua script over the same keys.

use crate::keys::coupon_key;
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
    fn restore(&self, coupon: &[u8], floor: u64, pairs: &[(&[u8], u64)]) -> Result<Call, Error>;
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
                command.arg("issue").arg(args.user).arg(args.limit);
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
                command.arg("revoke").arg(user);
            }),
        }
    }

    fn restore(&self, coupon: &[u8], floor: u64, pairs: &[(&[u8], u64)]) -> Result<Call, Error> {
        let add_pairs = |command: &mut Cmd| {
            command.arg(floor);
            for (user, seq) in pairs {
                command.arg(*user).arg(*seq);
            }
        };
        match self {
            Backend::Module => {
                let mut command = redis::cmd("COUPON.RESTORE");
                command.arg(coupon);
                add_pairs(&mut command);
                Ok(Call {
                    command,
                    on_noscript: None,
                })
            }
            Backend::Script => script_call(coupon, |command| {
                command.arg("restore");
                add_pairs(command);
            }),
        }
    }
}

/// `EVALSHA sha 2 <coupon> <events> <argv>`, with `EVAL <source> …` as the fallback.
/// Only the script names the event stream; the module derives it itself.
fn script_call(coupon: &[u8], argv: impl Fn(&mut Cmd)) -> Result<Call, Error> {
    let events = coupon_key(coupon)?.events_key();
    let build = |verb: &str, body: &str| {
        let mut command = redis::cmd(verb);
        command.arg(body).arg(2).arg(coupon).arg(&events);
        argv(&mut command);
        command
    };
    Ok(Call {
        command: build("EVALSHA", SCRIPT.get_hash()),
        on_noscript: Some(build("EVAL", crate::SCRIPT_SOURCE)),
    })
}

#[cfg(test)]
mod tests {
    use coupon_layout::{EventField, Op, LAST_SEQ_FIELD};

    /// The script spells the layout's names in one line; they must be the layout's.
    #[test]
    fn the_script_uses_the_layouts_names() {
        let quoted = |text: &[u8]| format!("'{}'", String::from_utf8_lossy(text));
        let expected = format!(
            "local LAST_SEQ, OP, USER, SEQ, ISSUE, REVOKE, RESTORE = {}, {}, {}, {}, {}, {}, {}",
            quoted(LAST_SEQ_FIELD),
            quoted(EventField::Op.name().as_bytes()),
            quoted(EventField::User.name().as_bytes()),
            quoted(EventField::Seq.name().as_bytes()),
            quoted(Op::Issue.word().as_bytes()),
            quoted(Op::Revoke.word().as_bytes()),
            quoted(Op::Restore.word().as_bytes()),
        );
        let names = crate::SCRIPT_SOURCE
            .lines()
            .find(|line| line.starts_with("local LAST_SEQ,"))
            .expect("the script names the layout in one line");
        assert_eq!(names, expected);
        let fields: Vec<_> = coupon_layout::EVENT_FIELDS
            .iter()
            .map(|f| f.name())
            .collect();
        assert_eq!(
            fields,
            ["op", "user", "seq"],
            "the script writes fields in this order"
        );
        assert!(
            crate::SCRIPT_SOURCE.contains("'XADD', events, '*', OP, ISSUE, USER, user, SEQ, seq")
        );
    }
}
