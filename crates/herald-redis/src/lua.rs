//! Lua scripts, called by hash with the source as the fallback.
//!
//! `redis::Script` answers `NOSCRIPT` with `SCRIPT LOAD` then `EVALSHA` again. On a Cluster
//! in the middle of a failover that second `EVALSHA` can reach a promoted replica whose script
//! cache is empty (the cache is not replicated) before the client knows it is a master, and
//! fail. Here the fallback is `EVAL` with the source, which runs wherever the call is routed
//! and caches the script there. A pipeline of calls ([`Call::by_hash`]) does the same
//! itself: the calls answered `NOSCRIPT` go again as [`Call::by_source`] in a second one.

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, ToRedisArgs, Value};

/// A script's source and SHA1.
pub(crate) struct Lua {
    src: String,
    hash: String,
}

impl Lua {
    pub(crate) fn new(src: &str) -> Lua {
        Lua {
            src: src.to_owned(),
            hash: redis::Script::new(src).get_hash().to_owned(),
        }
    }

    /// The script's source (for `SCRIPT LOAD`).
    pub(crate) fn source(&self) -> &str {
        &self.src
    }

    pub(crate) fn prepare_invoke(&self) -> Call<'_> {
        Call {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a [`Lua`] script: its keys (the first one routes it on a Cluster) and
/// arguments.
pub(crate) struct Call<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    pub(crate) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The call as `EVALSHA`, for a pipeline.
    pub(crate) fn by_hash(&self) -> redis::Cmd {
        self.command("EVALSHA", &self.lua.hash)
    }

    /// The call as `EVAL` with the source: for a pipeline's calls answered `NOSCRIPT`.
    pub(crate) fn by_source(&self) -> redis::Cmd {
        self.command("EVAL", &self.lua.src)
    }

    /// Like [`Call::invoke_async`], answering the reply as it came: the errors nested in it
    /// (a batch script's items that failed) stay where they are.
    pub(crate) async fn invoke_raw(&self, con: &mut impl ConnectionLike) -> RedisResult<Value> {
        match raw(&self.by_hash(), con).await {
            Err(e) if is_noscript(&e) => raw(&self.by_source(), con).await,
            r => r,
        }
    }

    fn command(&self, name: &str, body: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(body)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    /// `EVALSHA`, and `EVAL` when the server does not know the script.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        con: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self
            .command("EVALSHA", &self.lua.hash)
            .query_async(con)
            .await
        {
            Err(e) if is_noscript(&e) => self.by_source().query_async(con).await,
            r => r,
        }
    }
}

/// `cmd`'s reply as it came: an error reply is an error, but an error nested in an array
/// stays in it (`Cmd::query_async` would fail the whole call with the first one it finds).
async fn raw(cmd: &redis::Cmd, con: &mut impl ConnectionLike) -> RedisResult<Value> {
    match con.req_packed_command(cmd).await? {
        Value::ServerError(e) => Err(e.into()),
        v => Ok(v),
    }
}

/// Whether the server answered that it does not know the script (its cache is empty after a
/// restart, a `SCRIPT FLUSH` or a failover to a replica).
pub(crate) fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
