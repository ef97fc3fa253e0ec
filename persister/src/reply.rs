//! Decoding Redis stream replies into binary-safe values.

use crate::event::{EntryId, RawEntry, Source, StreamKey};
use redis::Value;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub struct BadReply(pub String);

fn bad(what: &str, value: &Value) -> BadReply {
    BadReply(format!("{what}: {value:?}"))
}

pub fn bytes(value: &Value) -> Result<Vec<u8>, BadReply> {
    match value {
        Value::BulkString(bytes) => Ok(bytes.clone()),
        Value::SimpleString(text) => Ok(text.as_bytes().to_vec()),
        Value::VerbatimString { text, .. } => Ok(text.as_bytes().to_vec()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(bad("expected a string", other)),
    }
}

pub fn text(value: &Value) -> Result<String, BadReply> {
    String::from_utf8(bytes(value)?).map_err(|_| bad("expected text", value))
}

pub fn int(value: &Value) -> Result<i64, BadReply> {
    match value {
        Value::Int(n) => Ok(*n),
        other => text(other)?
            .parse()
            .map_err(|_| bad("expected an integer", other)),
    }
}

pub fn entry_id(value: &Value) -> Result<EntryId, BadReply> {
    text(value)?
        .parse()
        .map_err(|e: crate::event::BadEntryId| BadReply(e.to_string()))
}

/// The items of an array (or of a RESP3 set); nil is an empty list.
pub fn items(value: &Value) -> Result<&[Value], BadReply> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(bad("expected an array", other)),
    }
}

/// Key/value pairs from a flat array or a RESP3 map.
pub fn pairs(value: &Value) -> Result<Vec<(&Value, &Value)>, BadReply> {
    match value {
        Value::Map(pairs) => Ok(pairs.iter().map(|(k, v)| (k, v)).collect()),
        other => {
            let items = items(other)?;
            if items.len() % 2 != 0 {
                return Err(bad("expected pairs", other));
            }
            Ok(items.chunks(2).map(|pair| (&pair[0], &pair[1])).collect())
        }
    }
}

/// The bytes of a string reply, moved out of it (replies of thousands of entries are not
/// copied twice).
fn into_bytes(value: Value) -> Result<Vec<u8>, BadReply> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        other => bytes(&other),
    }
}

/// The items of an array reply, moved out of it.
fn into_items(value: Value) -> Result<Vec<Value>, BadReply> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(bad("expected an array", &other)),
    }
}

/// One `[id, [field, value, …] | nil]` entry.
pub fn entry(stream: &StreamKey, value: Value, source: Source) -> Result<RawEntry, BadReply> {
    let mut parts = into_items(value)?.into_iter();
    let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(BadReply("expected [id, fields]".into()));
    };
    let id = entry_id(&id)?;
    let fields = match fields {
        Value::Nil => None,
        Value::Map(pairs) => Some(
            pairs
                .into_iter()
                .map(|(k, v)| Ok((into_bytes(k)?, into_bytes(v)?)))
                .collect::<Result<Vec<_>, BadReply>>()?,
        ),
        other => {
            let items = into_items(other)?;
            if items.len() % 2 != 0 {
                return Err(BadReply("expected field/value pairs".into()));
            }
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((into_bytes(k)?, into_bytes(v)?));
            }
            Some(pairs)
        }
    };
    Ok(RawEntry {
        stream: stream.clone(),
        id,
        fields,
        source,
    })
}

/// An `XREADGROUP` reply: `[[stream, [entry…]]…]`, a RESP3 map, or nil on timeout.
pub fn read_reply(value: Value, source: Source) -> Result<Vec<RawEntry>, BadReply> {
    let streams: Vec<(Value, Value)> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        other => into_items(other)?
            .into_iter()
            .map(|pair| {
                let mut parts = into_items(pair)?.into_iter();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(name), Some(entries), None) => Ok((name, entries)),
                    _ => Err(BadReply("expected [stream, entries]".into())),
                }
            })
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        let stream: StreamKey = Arc::from(into_bytes(name)?);
        let entries = into_items(entries)?;
        out.reserve(entries.len());
        for value in entries {
            out.push(entry(&stream, value, source)?);
        }
    }
    Ok(out)
}

/// An `XAUTOCLAIM` reply: `[next-cursor, [entry…], [deleted-id…]]`.
pub struct Claimed {
    pub cursor: EntryId,
    pub entries: Vec<RawEntry>,
    pub deleted: Vec<EntryId>,
}

pub fn claim_reply(stream: &StreamKey, value: Value) -> Result<Claimed, BadReply> {
    let mut parts = into_items(value)?.into_iter();
    let (Some(cursor), Some(entries), deleted, None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadReply("expected an XAUTOCLAIM reply".into()));
    };
    Ok(Claimed {
        cursor: entry_id(&cursor)?,
        entries: into_items(entries)?
            .into_iter()
            .map(|v| entry(stream, v, crate::event::Source::Claimed))
            .collect::<Result<_, _>>()?,
        deleted: match deleted {
            Some(list) => items(&list)?
                .iter()
                .map(entry_id)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn decodes_xreadgroup_with_a_trimmed_entry() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("{a}:events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-1"),
                    Value::Array(vec![bulk("op"), bulk("issue")]),
                ]),
                Value::Array(vec![bulk("1-2"), Value::Nil]),
            ]),
        ])]);
        let entries = read_reply(reply, Source::Pending).expect("valid");
        assert_eq!(entries.len(), 2);
        assert_eq!(&*entries[0].stream, b"{a}:events");
        assert_eq!(entries[0].id, EntryId { ms: 1, seq: 1 });
        assert!(entries[0].fields.is_some());
        assert!(entries[1].fields.is_none());
        assert!(read_reply(Value::Nil, Source::New).expect("nil").is_empty());
    }

    #[test]
    fn decodes_xautoclaim() {
        let stream: StreamKey = Arc::from(&b"{a}:events"[..]);
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("3-0"),
                Value::Array(vec![bulk("op"), bulk("revoke")]),
            ])]),
            Value::Array(vec![bulk("2-0")]),
        ]);
        let claimed = claim_reply(&stream, reply).expect("valid");
        assert_eq!(claimed.cursor, EntryId::ZERO);
        assert_eq!(claimed.entries.len(), 1);
        assert_eq!(claimed.deleted, vec![EntryId { ms: 2, seq: 0 }]);
    }
}
