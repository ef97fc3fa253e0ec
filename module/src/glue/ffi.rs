//! Small safe wrappers over the raw module API: owned strings, opened keys and their reads.
//! Every pointer is freed or closed on drop. Writes live in `write`, the one write path.

use redis_module::raw;
use std::ffi::CStr;
use std::os::raw::c_int;
use std::ptr;

pub type Ctx = *mut raw::RedisModuleCtx;
pub type RawString = *mut raw::RedisModuleString;

/// Calls a module API function. `register::on_load` refuses to load unless all of
/// [`api_is_complete`]'s functions exist, so the `expect` cannot fire at run time.
macro_rules! api {
    ($name:ident) => {{
        #[allow(unused_unsafe)]
        let function = unsafe { redis_module::raw::$name };
        function.expect(concat!(stringify!($name), " is checked at load"))
    }};
}
pub(crate) use api;

/// Whether the server exports every function the commands call.
pub fn api_is_complete() -> Result<(), &'static str> {
    macro_rules! require {
        ($($name:ident),* $(,)?) => {
            $(if unsafe { raw::$name }.is_none() {
                return Err(stringify!($name));
            })*
        };
    }
    require!(
        RedisModule_CreateString,
        RedisModule_FreeString,
        RedisModule_StringPtrLen,
        RedisModule_OpenKey,
        RedisModule_CloseKey,
        RedisModule_KeyType,
        RedisModule_ValueLength,
        RedisModule_HashGet,
        RedisModule_HashSet,
        RedisModule_StreamAdd,
        RedisModule_StreamDelete,
        RedisModule_ScanCursorCreate,
        RedisModule_ScanCursorDestroy,
        RedisModule_ScanKey,
        RedisModule_GetContextFlags,
        RedisModule_KeyExists,
        RedisModule_Call,
        RedisModule_SubscribeToServerEvent,
        RedisModule_SubscribeToKeyspaceEvents,
        RedisModule_InfoAddFieldCString,
        RedisModule_Replicate,
        RedisModule_NotifyKeyspaceEvent,
        RedisModule_Milliseconds,
        RedisModule_ReplyWithArray,
        RedisModule_ReplyWithMap,
        RedisModule_ReplyWithSimpleString,
        RedisModule_ReplyWithStringBuffer,
        RedisModule_ReplyWithLongLong,
        RedisModule_ReplyWithNull,
        RedisModule_ReplyWithError,
        RedisModule_CreateCommand,
        RedisModule_GetCommand,
        RedisModule_SetCommandInfo,
        RedisModule_RegisterInfoFunc,
        RedisModule_InfoAddSection,
        RedisModule_InfoAddFieldULongLong,
    );
    Ok(())
}

/// The bytes of a string the server owns (an argument) or we own; valid while it lives.
///
/// # Safety
/// `s` must point to a live `RedisModuleString` that outlives `'a`.
pub unsafe fn bytes_of<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    let mut len = 0usize;
    let ptr = api!(RedisModule_StringPtrLen)(s, &mut len);
    if ptr.is_null() || len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(ptr.cast::<u8>(), len)
}

/// A string this module created; freed on drop.
pub struct OwnedString {
    ctx: Ctx,
    ptr: RawString,
}

impl OwnedString {
    pub fn new(ctx: Ctx, bytes: &[u8]) -> Self {
        let ptr =
            unsafe { api!(RedisModule_CreateString)(ctx, bytes.as_ptr().cast(), bytes.len()) };
        OwnedString { ctx, ptr }
    }

    pub fn from_i64(ctx: Ctx, value: i64) -> Self {
        let mut buf = itoa::Buffer::new();
        Self::new(ctx, buf.format(value).as_bytes())
    }

    pub fn as_ptr(&self) -> RawString {
        self.ptr
    }

    pub fn bytes(&self) -> &[u8] {
        unsafe { bytes_of(self.ptr) }
    }
}

impl Drop for OwnedString {
    fn drop(&mut self) {
        unsafe { api!(RedisModule_FreeString)(self.ctx, self.ptr) }
    }
}

/// A string created once at load and kept for the life of the server (field names).
#[derive(Clone, Copy)]
pub struct StaticString(RawString);

// Created before any command runs and only read afterwards, on the main thread.
unsafe impl Send for StaticString {}
unsafe impl Sync for StaticString {}

impl StaticString {
    pub fn new(text: &[u8]) -> Self {
        let ptr = unsafe {
            api!(RedisModule_CreateString)(ptr::null_mut(), text.as_ptr().cast(), text.len())
        };
        StaticString(ptr)
    }

    pub fn as_ptr(self) -> RawString {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Empty,
    Hash,
    Stream,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
}

/// An opened key; closed on drop. A key opened for writing marks itself modified on close
/// (WATCH, client-side caching), so the rejecting paths open keys for reading only.
pub struct OpenKey {
    /// Written through only by `write`, the one write path.
    pub(super) ptr: *mut raw::RedisModuleKey,
}

impl OpenKey {
    pub fn open(ctx: Ctx, name: RawString, mode: Mode) -> Self {
        let mode = match mode {
            Mode::Read => raw::REDISMODULE_READ,
            Mode::Write => raw::REDISMODULE_READ | raw::REDISMODULE_WRITE,
        };
        let ptr = unsafe { api!(RedisModule_OpenKey)(ctx, name, mode as c_int) };
        OpenKey { ptr }
    }

    pub fn kind(&self) -> KeyKind {
        if self.ptr.is_null() {
            return KeyKind::Empty;
        }
        match unsafe { api!(RedisModule_KeyType)(self.ptr) } as isize {
            raw::REDISMODULE_KEYTYPE_EMPTY => KeyKind::Empty,
            raw::REDISMODULE_KEYTYPE_HASH => KeyKind::Hash,
            raw::REDISMODULE_KEYTYPE_STREAM => KeyKind::Stream,
            _ => KeyKind::Other,
        }
    }

    /// Number of fields of a hash, entries of a stream; 0 for a missing key.
    pub fn len(&self) -> usize {
        if self.ptr.is_null() {
            return 0;
        }
        unsafe { api!(RedisModule_ValueLength)(self.ptr) }
    }

    /// A hash field's value. The caller has checked the key is a hash (or empty); the
    /// server answers nothing for any other type.
    pub fn hash_get(&self, ctx: Ctx, field: RawString) -> Option<OwnedString> {
        if self.ptr.is_null() {
            return None;
        }
        let mut value: RawString = ptr::null_mut();
        let status = unsafe {
            api!(RedisModule_HashGet)(
                self.ptr,
                raw::REDISMODULE_HASH_NONE as c_int,
                field,
                &mut value as *mut RawString,
                ptr::null::<u8>(),
            )
        };
        if status != raw::REDISMODULE_OK as c_int || value.is_null() {
            return None;
        }
        Some(OwnedString { ctx, ptr: value })
    }

    /// Calls `visit` with every field and value of a hash (nothing for a missing key). The
    /// caller has checked the key is a hash; the hash must not change meanwhile.
    pub fn scan_hash<F: FnMut(&[u8], &[u8])>(&self, mut visit: F) {
        if self.ptr.is_null() {
            return;
        }
        unsafe extern "C" fn each<G: FnMut(&[u8], &[u8])>(
            _key: *mut raw::RedisModuleKey,
            field: RawString,
            value: RawString,
            data: *mut std::os::raw::c_void,
        ) {
            let visit = &mut *data.cast::<G>();
            visit(bytes_of(field), bytes_of(value));
        }
        unsafe {
            let cursor = api!(RedisModule_ScanCursorCreate)();
            let data = (&mut visit as *mut F).cast::<std::os::raw::c_void>();
            while api!(RedisModule_ScanKey)(self.ptr, cursor, Some(each::<F>), data) != 0 {}
            api!(RedisModule_ScanCursorDestroy)(cursor);
        }
    }
}

impl Drop for OpenKey {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            unsafe { api!(RedisModule_CloseKey)(self.ptr) }
        }
    }
}

/// Whether a key exists, without opening it or touching its access time.
pub fn key_exists(ctx: Ctx, name: RawString) -> bool {
    unsafe { api!(RedisModule_KeyExists)(ctx, name) != 0 }
}

/// `REDISMODULE_CTX_FLAGS_*` of the call being served (cluster mode, out of memory…).
pub fn context_flags(ctx: Ctx) -> u32 {
    unsafe { api!(RedisModule_GetContextFlags)(ctx) as u32 }
}

/// The server's clock in unix milliseconds.
pub fn now_ms() -> i64 {
    unsafe { api!(RedisModule_Milliseconds)() }
}

/// Emits a keyspace notification, as the built-in command would.
pub fn notify(ctx: Ctx, class: c_int, event: &CStr, key: RawString) {
    unsafe { api!(RedisModule_NotifyKeyspaceEvent)(ctx, class, event.as_ptr(), key) };
}
