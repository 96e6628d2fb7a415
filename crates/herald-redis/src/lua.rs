//! Lua scripts, called by hash with the source as the fallback.
//!
//! `redis::Script` answers `NOSCRIPT` with `SCRIPT LOAD` then `EVALSHA` again. On a Cluster
//! in the middle of a failover that second `EVALSHA` can reach a promoted replica whose script
//! cache is empty (the cache is not replicated) before the client knows it is a master, and
//! fail. Here the fallback is `EVAL` with the source, which runs wherever the call is routed
//! and caches the script there.

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, ToRedisArgs};

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
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.command("EVAL", &self.lua.src).query_async(con).await
            }
            r => r,
        }
    }
}
