//! Module load: checks the server's API, registers the commands with their flags, key specs
//! and ACL categories, starts the change index and adds the INFO section.

use super::boundary::{serve, Handler};
use super::commands;
use super::ffi::{api, api_is_complete, Ctx, RawString};
use super::{changes, eviction, stats, words};
use redis_module::{raw, Context, RedisString, Status};
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::c_int;
use std::ptr;

struct Command {
    name: &'static CStr,
    callback: raw::RedisModuleCmdFunc,
    flags: &'static CStr,
    /// Redis' arity: exact if positive, a minimum if negative (command name included).
    arity: c_int,
    /// How the command uses the coupon key (`REDISMODULE_CMD_KEY_*`); `None`: it names no key.
    key_flags: Option<u32>,
    /// ACL categories; only servers from 7.2 on (and Valkey) can set them. On 7.0 a
    /// module command belongs to no category and must be allowed by name.
    acl: &'static CStr,
    summary: &'static CStr,
    complexity: &'static CStr,
}

macro_rules! callback {
    ($command:literal, $handler:path) => {{
        extern "C" fn callback(ctx: Ctx, argv: *mut RawString, argc: c_int) -> c_int {
            serve(ctx, argv, argc, $command, $handler as Handler)
        }
        Some(callback as unsafe extern "C" fn(Ctx, *mut RawString, c_int) -> c_int)
    }};
}

fn commands() -> [Command; 6] {
    [
        Command {
            name: c"coupon.issue",
            callback: callback!("COUPON.ISSUE", commands::issue),
            // Not deny-oom: a retry or a sold-out click writes nothing and keeps answering at
            // maxmemory; the write path refuses with -OOM itself.
            flags: c"write fast",
            arity: -4,
            key_flags: Some(
                raw::REDISMODULE_CMD_KEY_RW
                    | raw::REDISMODULE_CMD_KEY_ACCESS
                    | raw::REDISMODULE_CMD_KEY_INSERT,
            ),
            acl: c"write fast hash stream",
            summary: c"Issues a coupon to a user if stock and the sale window allow, once per user",
            complexity: c"O(1)",
        },
        Command {
            name: c"coupon.revoke",
            callback: callback!("COUPON.REVOKE", commands::revoke),
            flags: c"write fast",
            arity: 3,
            key_flags: Some(raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_DELETE),
            acl: c"write fast hash stream",
            summary: c"Takes a coupon back from its holder; the stock returns, the seq does not",
            complexity: c"O(1)",
        },
        Command {
            name: c"coupon.restore",
            callback: callback!("COUPON.RESTORE", commands::restore),
            // An operator's repair: not fast (it may pass over every holder). Not deny-oom,
            // like the others: a re-run that writes nothing answers at maxmemory.
            flags: c"write",
            arity: -3,
            key_flags: Some(
                raw::REDISMODULE_CMD_KEY_RW
                    | raw::REDISMODULE_CMD_KEY_ACCESS
                    | raw::REDISMODULE_CMD_KEY_UPDATE,
            ),
            acl: c"write hash stream",
            summary: c"Puts back holders a database knows and Redis lost, and raises the last seq",
            complexity:
                c"O(N) for N pairs, plus O(H) for H holders when a pair's user holds nothing",
        },
        Command {
            name: c"coupon.check",
            callback: callback!("COUPON.CHECK", commands::check),
            flags: c"readonly fast",
            arity: 3,
            key_flags: Some(raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS),
            acl: c"read fast hash",
            summary: c"Returns the seq a user holds, or nil",
            complexity: c"O(1)",
        },
        Command {
            name: c"coupon.info",
            callback: callback!("COUPON.INFO", commands::info),
            flags: c"readonly fast",
            arity: 2,
            key_flags: Some(raw::REDISMODULE_CMD_KEY_RO),
            acl: c"read fast hash stream",
            summary: c"Returns a coupon's holders, revokes, last seq and event count",
            complexity: c"O(1)",
        },
        Command {
            name: c"coupon.changes",
            callback: callback!("COUPON.CHANGES", changes::changes),
            // Keyless: on a cluster any node answers, about its own streams. Not fast: it
            // lists up to COUNT names.
            flags: c"readonly",
            arity: -2,
            key_flags: None,
            acl: c"read slow keyspace",
            summary: c"Lists this node's coupon event streams changed since a cursor",
            complexity: c"O(N) for N streams listed (at most COUNT), plus O(log M) for M indexed",
        },
    ]
}

/// The `init` hook of the module.
pub fn on_load(ctx: &Context, _args: &[RedisString]) -> Status {
    if let Err(missing) = api_is_complete() {
        ctx.log_warning(&format!("this server does not provide {missing}"));
        return Status::Err;
    }
    words::init();
    eviction::watch(ctx.ctx);
    if let Err(why) = changes::init(ctx.ctx) {
        ctx.log_warning(&format!("cannot start the change index: {why}"));
        return Status::Err;
    }
    for command in commands() {
        if let Err(why) = register(ctx.ctx, &command) {
            ctx.log_warning(&format!(
                "cannot register {command:?}: {why}",
                command = command.name
            ));
            return Status::Err;
        }
    }
    unsafe { api!(RedisModule_RegisterInfoFunc)(ctx.ctx, Some(stats::info)) };
    Status::Ok
}

fn register(ctx: Ctx, command: &Command) -> Result<(), &'static str> {
    let ok = raw::REDISMODULE_OK as c_int;
    // The legacy key range: the coupon key at 1, or none.
    let key = c_int::from(command.key_flags.is_some());
    unsafe {
        if api!(RedisModule_CreateCommand)(
            ctx,
            command.name.as_ptr(),
            command.callback,
            command.flags.as_ptr(),
            key,
            key,
            key,
        ) != ok
        {
            return Err("CreateCommand failed");
        }
        let handle = api!(RedisModule_GetCommand)(ctx, command.name.as_ptr());
        if handle.is_null() {
            return Err("GetCommand found nothing");
        }
        // Terminated by a zeroed spec; a keyless command has only the terminator.
        let mut key_specs = [
            MaybeUninit::zeroed().assume_init(),
            MaybeUninit::zeroed().assume_init(),
        ];
        if let Some(flags) = command.key_flags {
            key_specs[0] = coupon_key_spec(flags);
        }
        let version = raw::RedisModuleCommandInfoVersion {
            version: 1,
            sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
            sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
            sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
        };
        let info = raw::RedisModuleCommandInfo {
            version: &version,
            summary: command.summary.as_ptr(),
            complexity: command.complexity.as_ptr(),
            since: c"0.1.0".as_ptr(),
            history: ptr::null_mut(),
            tips: ptr::null(),
            arity: command.arity,
            key_specs: key_specs.as_mut_ptr(),
            args: ptr::null_mut(),
        };
        if api!(RedisModule_SetCommandInfo)(handle, &info) != ok {
            return Err("SetCommandInfo refused the command info");
        }
        if let Some(set_categories) = raw::RedisModule_SetCommandACLCategories {
            if set_categories(handle, command.acl.as_ptr()) != ok {
                return Err("SetCommandACLCategories refused the categories");
            }
        }
    }
    Ok(())
}

/// The coupon key is argument 1: the hash of its holders. Its event stream shares its slot.
fn coupon_key_spec(flags: u32) -> raw::RedisModuleCommandKeySpec {
    raw::RedisModuleCommandKeySpec {
        notes: c"the coupon key (a hash: user -> seq); its event stream shares its hash slot"
            .as_ptr(),
        flags: u64::from(flags),
        begin_search_type: raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX,
        bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
            index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos: 1 },
        },
        find_keys_type: raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
        fk: raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
            range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
                lastkey: 0,
                keystep: 1,
                limit: 0,
            },
        },
    }
}
