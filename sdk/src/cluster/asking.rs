//! Following an `-ASK`: `ASKING` and the command it is for, in one pipeline to the node.
//!
//! `ASKING` lets only the next command on its connection into an importing slot. Sent as a
//! request of its own on a connection other tasks share, another task's command can come
//! between the two, take the flag and leave the redirected command to bounce back with `-ASK`
//! or `-MOVED` (redis-rs 1.8's cluster client does this). In one pipeline the two are written
//! together and run back to back.

use super::redirect::Node;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisResult, Value};

/// Sends `command` to `node`, preceded by `ASKING`.
pub(crate) async fn command(
    connection: &mut ClusterConnection,
    command: &Cmd,
    node: &Node,
) -> RedisResult<Value> {
    let mut pipe = Pipeline::with_capacity(2);
    pipe.cmd("ASKING").add_command(command.clone());
    let mut replies = connection
        .route_pipeline(pipe, 0, 2, node.routing())
        .await?;
    let reply = replies.pop();
    match (replies.pop(), reply) {
        (Some(asking), Some(reply)) => {
            asking.extract_error()?;
            Ok(reply)
        }
        _ => Err(wrong_count(2)),
    }
}

/// Sends each command of `pipeline` to `node`, each preceded by `ASKING`, and returns the
/// replies `offset..offset + count` of the commands, as the pipeline itself would have.
/// Refuses a transaction (`MULTI`/`EXEC`), whose commands `ASKING` cannot be put between.
pub(crate) async fn pipeline(
    connection: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
    node: &Node,
) -> RedisResult<Vec<Value>> {
    if pipeline.is_transaction() {
        return Err(RedisError::from((
            ErrorKind::Client,
            "a transaction cannot follow -ASK",
        )));
    }
    let sent = pipeline.len() * 2;
    let mut pipe = Pipeline::with_capacity(sent);
    for command in pipeline.cmd_iter() {
        pipe.cmd("ASKING").add_command(command.clone());
    }
    let replies = connection
        .route_pipeline(pipe, 0, sent, node.routing())
        .await?;
    if replies.len() != sent {
        return Err(wrong_count(sent));
    }
    let mut answers = Vec::with_capacity(pipeline.len());
    let mut replies = replies.into_iter();
    while let (Some(asking), Some(reply)) = (replies.next(), replies.next()) {
        asking.extract_error()?;
        answers.push(reply);
    }
    Ok(answers.into_iter().skip(offset).take(count).collect())
}

fn wrong_count(sent: usize) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "a redirected pipeline's answer has the wrong number of replies",
        format!("{sent} commands sent"),
    ))
}
