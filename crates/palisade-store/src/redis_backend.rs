//! The Redis and Redis Cluster backends.
//!
//! - Single node: a [`ConnectionManager`] — one multiplexed connection that
//!   reconnects by itself after the server goes away.
//! - Cluster: a [`ClusterConnection`], which keeps a multiplexed connection
//!   per node, follows MOVED / ASK and refreshes its slot map; a node that
//!   dies and comes back is reconnected on the next request to it.
//!
//! Every call is bounded by the per-operation timeout. Multi-key atomic
//! operations are Lua scripts run with EVALSHA ([`redis::Script`] reloads a
//! script on NOSCRIPT).

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use crate::gcra::{Params, RateDecision};
use crate::tokens::{TokenParams, lease_key};
use crate::{Backend, StoreConfig, StoreError, StreamEntry};
use crate::{TokenDecision, TokenReservation, TokenSettlement};

/// GCRA over N keys, all-or-nothing. See the `gcra` module docs for the
/// arithmetic. ARGV[1] = mode (0 consume, 1 peek: decide, count nothing,
/// report allowed checks against the untouched state), then per key
/// `T, tau, cost, limit` (microseconds). Returns 4 integers per key:
/// allowed (0/1), remaining, reset_after µs, retry_after µs (-1 = none).
const GCRA_LUA: &str = r"
local mode = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local n = #KEYS
local before, cur, out = {}, {}, {}
local all = true
for i = 1, n do
  local k = KEYS[i]
  local t, tau = tonumber(ARGV[4*i-2]), tonumber(ARGV[4*i-1])
  local cost, limit = tonumber(ARGV[4*i]), tonumber(ARGV[4*i+1])
  if cur[k] == nil then
    local v = redis.call('GET', k)
    local tat = 0
    if v then
      tat = tonumber(v)
      if tat == nil or tat < 0 then
        return redis.error_reply('BADDATA rate-limit state at ' .. k .. ' is not a number')
      end
    end
    before[k] = tat
    cur[k] = tat
  end
  local base = math.max(cur[k], now)
  local new_tat = base + cost * t
  local diff = new_tat - now
  local j = 4 * (i - 1)
  if diff <= tau then
    out[j+1], out[j+2], out[j+3], out[j+4] = 1, math.min(limit, math.floor((tau - diff) / t)), diff, -1
    if cost > 0 then cur[k] = new_tat end
  else
    all = false
    out[j+1] = 0
    out[j+2] = math.min(limit, math.floor(math.max(0, tau - (base - now)) / t))
    out[j+3], out[j+4] = base - now, diff - tau
  end
end
if all and mode == 0 then
  for k, tat in pairs(cur) do
    if tat ~= before[k] then
      redis.call('SET', k, string.format('%.0f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
    end
  end
else
  -- Nothing was counted (a denial, or a peek): report the untouched state.
  for i = 1, n do
    local j = 4 * (i - 1)
    if out[j+1] == 1 then
      local t, tau, limit = tonumber(ARGV[4*i-2]), tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i+1])
      local base = math.max(before[KEYS[i]], now)
      out[j+2] = math.min(limit, math.floor(math.max(0, tau - (base - now)) / t))
      out[j+3] = base - now
    end
  end
end
return out
";

/// Gives back `ARGV[i]` µs of TAT on `KEYS[i]` (compensation of a cross-slot
/// batch that lost a race).
const REFUND_LUA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat and tat > now then
    local nt = tat - tonumber(ARGV[i])
    if nt <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', nt), 'PX', math.max(1, math.ceil((nt - now) / 1000)))
    end
  end
end
return 1
";

/// ARGV: has_expected (0/1), expected, new, ttl ms (0 = none).
const CAS_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
local ok
if ARGV[1] == '0' then ok = (v == false) else ok = (v == ARGV[2]) end
if not ok then return 0 end
if ARGV[4] == '0' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
";

/// ARGV: delta, ttl ms. The TTL is set only when the key is created.
const INCR_LUA: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
";

/// The shared head of the token scripts: reads the bucket of `KEYS[1]` (a
/// hash: `tat`, `seq`, `r<id>` = reserved tokens) and gives back every lease
/// of `KEYS[2]` (a sorted set of ids by expiry µs) expired by now. ARGV[1] =
/// T µs a token. Defines `now`, `t`, `tat` and `persist()`, which writes the
/// TAT back and sets both keys to expire when the bucket is full again and
/// no lease is held. See the `tokens` module docs.
const TOKEN_HEAD_LUA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local t = tonumber(ARGV[1])
local raw = redis.call('HGET', KEYS[1], 'tat')
local tat = 0
if raw then
  tat = tonumber(raw)
  if tat == nil or tat < 0 then
    return redis.error_reply('BADDATA token state at ' .. KEYS[1] .. ' is not a number')
  end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do
  local amount = tonumber(redis.call('HGET', KEYS[1], 'r' .. id) or '0') or 0
  tat = math.max(math.max(tat, now) - amount * t, now)
  redis.call('HDEL', KEYS[1], 'r' .. id)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local function persist()
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
  local horizon = tat - now
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if last[2] then
    horizon = math.max(horizon, tonumber(last[2]) - now)
  end
  local ms = math.max(1, math.ceil(horizon / 1000))
  redis.call('PEXPIRE', KEYS[1], ms)
  redis.call('PEXPIRE', KEYS[2], ms)
end
";

/// Reserve. ARGV: T, tau, amount, lease µs. Returns admitted (0/1), id
/// ('' when refused), remaining, reset_after µs, retry_after µs (-1 = none).
const TOKEN_RESERVE_LUA: &str = r"
local tau, amount, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local base = math.max(tat, now)
local diff = base + amount * t - now
if diff <= tau then
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local id = string.format('%.0f', now) .. '-' .. seq
  redis.call('HSET', KEYS[1], 'r' .. id, amount)
  redis.call('ZADD', KEYS[2], now + lease, id)
  tat = base + amount * t
  persist()
  return {1, id, math.floor((tau - diff) / t), diff, -1}
end
if #expired > 0 then persist() end
return {0, '', math.floor(math.max(0, tau - (base - now)) / t), base - now, diff - tau}
";

/// Settle. ARGV: T, tau, id, actual. Returns held (0/1), refunded,
/// remaining, reset_after µs.
const TOKEN_SETTLE_LUA: &str = r"
local tau, id, actual = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local base = math.max(tat, now)
local reserved = redis.call('HGET', KEYS[1], 'r' .. id)
local held, refunded = 0, 0
if reserved then
  reserved = tonumber(reserved) or 0
  redis.call('HDEL', KEYS[1], 'r' .. id)
  redis.call('ZREM', KEYS[2], id)
  tat = math.max(base + (actual - reserved) * t, now)
  held, refunded = 1, math.max(0, reserved - actual)
else
  tat = base + actual * t
end
persist()
local diff = tat - now
return {held, refunded, math.floor(math.max(0, tau - diff) / t), diff}
";

static TOKEN_RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TOKEN_HEAD_LUA}{TOKEN_RESERVE_LUA}")));
static TOKEN_SETTLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TOKEN_HEAD_LUA}{TOKEN_SETTLE_LUA}")));

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));
static REFUND: LazyLock<Script> = LazyLock::new(|| Script::new(REFUND_LUA));
static CAS: LazyLock<Script> = LazyLock::new(|| Script::new(CAS_LUA));
static INCR: LazyLock<Script> = LazyLock::new(|| Script::new(INCR_LUA));

/// The connection of either kind, as one `ConnectionLike`.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(crate) struct RedisStore {
    conn: Conn,
    timeout: Duration,
    /// Where subscriptions connect (any one node will do), and how long
    /// they may take to.
    pubsub_urls: Vec<String>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.backend())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn ttl_ms(ttl: Duration) -> Result<u64, StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::InvalidInput("ttl must be non-zero".into()));
    }
    Ok(u64::try_from(ttl.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
}

/// `redis+cluster://[user:pass@]h1:p1,h2:p2` → `redis://[user:pass@]h:p` each.
fn cluster_nodes(url: &str) -> Result<Vec<String>, StoreError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Err(StoreError::InvalidConfig(format!(
            "not a cluster URL: {url}"
        )));
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{auth}{h}"))
        .collect();
    if nodes.is_empty() {
        return Err(StoreError::InvalidConfig(format!(
            "cluster URL names no node: {url}"
        )));
    }
    Ok(nodes)
}

impl RedisStore {
    pub(crate) async fn connect(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let url = cfg.url.as_str();
        let connect = async {
            if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
                let client = ClusterClientBuilder::new(cluster_nodes(url)?)
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.op_timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| StoreError::InvalidConfig(e.to_string()))?;
                let conn = client.get_async_connection().await?;
                Ok::<_, StoreError>(Conn::Cluster(conn))
            } else {
                let client = redis::Client::open(url)
                    .map_err(|e| StoreError::InvalidConfig(e.to_string()))?;
                let mcfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.connect_timeout))
                    .set_response_timeout(Some(cfg.op_timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(200));
                let conn = ConnectionManager::new_with_config(client, mcfg).await?;
                Ok(Conn::Single(conn))
            }
        };
        let conn = tokio::time::timeout(cfg.connect_timeout, connect)
            .await
            .map_err(|_| StoreError::Timeout(cfg.connect_timeout))??;
        let pubsub_urls =
            if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
                cluster_nodes(url)?
            } else {
                vec![url.to_owned()]
            };
        let store = RedisStore {
            conn,
            timeout: cfg.op_timeout,
            pubsub_urls,
            connect_timeout: cfg.connect_timeout,
        };
        store.ping().await?;
        Ok(store)
    }

    pub(crate) fn backend(&self) -> Backend {
        match self.conn {
            Conn::Single(_) => Backend::Redis,
            Conn::Cluster(_) => Backend::Cluster,
        }
    }

    /// Runs one operation under the per-operation timeout.
    async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let result = match tokio::time::timeout(self.timeout, f(&mut conn)).await {
            // The client's own response timeout (set to the same value) may
            // fire first: it is the same timeout.
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout(self.timeout)),
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        if let Err(err) = &result {
            tracing::debug!(backend = ?self.backend(), error = %err, "store operation failed");
        }
        result
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(async |c| cmd.query_async(c).await).await
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let v: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(key)).await?;
        Ok(v.map(Bytes::from))
    }

    fn set_cmd(
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        nx: bool,
    ) -> Result<Cmd, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if nx {
            cmd.arg("NX");
        }
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl_ms(ttl)?);
        }
        Ok(cmd)
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let cmd = Self::set_cmd(key, &value, ttl, false)?;
        let _: Value = self.query(&cmd).await?;
        Ok(())
    }

    pub(crate) async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let cmd = Self::set_cmd(key, &value, ttl, true)?;
        let v: Value = self.query(&cmd).await?;
        Ok(!matches!(v, Value::Nil))
    }

    pub(crate) async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // On a cluster, the client splits MGET by slot and reassembles.
        let v: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(keys)).await?;
        if v.len() != keys.len() {
            return Err(StoreError::BadData(format!(
                "MGET returned {} values for {} keys",
                v.len(),
                keys.len()
            )));
        }
        Ok(v.into_iter().map(|o| o.map(Bytes::from)).collect())
    }

    pub(crate) async fn set_many(
        &self,
        entries: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ms = ttl.map(ttl_ms).transpose()?;
        let pipe_for = |group: &[&(&str, Bytes)], atomic: bool| {
            let mut p = redis::pipe();
            if atomic {
                p.atomic();
            }
            for (k, v) in group {
                let c = p.cmd("SET").arg(*k).arg(v.as_ref());
                if let Some(ms) = ms {
                    c.arg("PX").arg(ms);
                }
                c.ignore();
            }
            p
        };
        match &self.conn {
            Conn::Single(_) => {
                let all: Vec<&(&str, Bytes)> = entries.iter().collect();
                let p = pipe_for(&all, true);
                self.run(async |c| p.exec_async(c).await).await
            }
            Conn::Cluster(_) => {
                // A cluster pipeline must stay in one slot: one per slot, in parallel.
                let mut by_slot: HashMap<Slot, Vec<&(&str, Bytes)>> = HashMap::new();
                for e in entries {
                    by_slot.entry(slot_of(e.0)).or_default().push(e);
                }
                let pipes: Vec<Pipeline> = by_slot.values().map(|g| pipe_for(g, true)).collect();
                self.run(async |c| {
                    try_join_all(pipes.iter().map(|p| {
                        let mut c = c.clone();
                        async move { p.exec_async(&mut c).await }
                    }))
                    .await
                    .map(drop)
                })
                .await
            }
        }
    }

    pub(crate) async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        match ttl {
            None => self.query(redis::cmd("INCRBY").arg(key).arg(delta)).await,
            Some(ttl) => {
                let ms = ttl_ms(ttl)?;
                let mut inv = INCR.prepare_invoke();
                inv.key(key).arg(delta).arg(ms);
                self.run(async |c| inv.invoke_async(c).await).await
            }
        }
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let n: i64 = self.query(redis::cmd("DEL").arg(key)).await?;
        Ok(n > 0)
    }

    pub(crate) async fn publish(&self, channel: &str, message: &[u8]) -> Result<(), StoreError> {
        let _receivers: i64 = self
            .query(redis::cmd("PUBLISH").arg(channel).arg(message))
            .await?;
        Ok(())
    }

    pub(crate) async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<crate::pubsub::Subscription, StoreError> {
        crate::pubsub::redis(
            self.pubsub_urls.clone(),
            channel.to_owned(),
            self.connect_timeout,
        )
        .await
    }

    pub(crate) async fn delete_matching(&self, pattern: &str) -> Result<u64, StoreError> {
        match &self.conn {
            Conn::Single(_) => self.scan_delete(pattern, None).await,
            Conn::Cluster(_) => {
                let mut total = 0;
                for addr in self.masters().await? {
                    total += self.scan_delete(pattern, Some(&addr)).await?;
                }
                Ok(total)
            }
        }
    }

    /// The address of every master that serves slots (from CLUSTER SLOTS).
    async fn masters(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let v: Value = self
            .query(&redis::cmd("CLUSTER").arg("SLOTS").to_owned())
            .await?;
        let bad = || StoreError::BadData("unexpected CLUSTER SLOTS reply".into());
        let Value::Array(ranges) = v else {
            return Err(bad());
        };
        let mut masters = BTreeSet::new();
        for r in ranges {
            let Value::Array(r) = r else {
                return Err(bad());
            };
            let Some(Value::Array(node)) = r.get(2) else {
                return Err(bad());
            };
            let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
                (node.first(), node.get(1))
            else {
                return Err(bad());
            };
            let host = String::from_utf8(host.clone()).map_err(|_| bad())?;
            masters.insert((host, u16::try_from(*port).map_err(|_| bad())?));
        }
        Ok(masters.into_iter().collect())
    }

    /// Sends `cmd` to exactly the node at `addr`: an error (not a fallback to
    /// another node) when the client has no live connection to it.
    async fn on_node<T: redis::FromRedisValue>(
        &self,
        addr: &(String, u16),
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: addr.0.clone(),
            port: addr.1,
        });
        let v = self
            .run(async |c| match c {
                Conn::Cluster(cc) => cc.route_command(cmd.clone(), route).await,
                Conn::Single(s) => cmd.query_async(s).await,
            })
            .await?;
        redis::from_redis_value(v).map_err(|e| StoreError::BadData(e.to_string()))
    }

    async fn scan_delete(
        &self,
        pattern: &str,
        node: Option<&(String, u16)>,
    ) -> Result<u64, StoreError> {
        let mut cursor = String::from("0");
        let mut total = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(&cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (String, Vec<Vec<u8>>) = match node {
                None => self.query(&scan).await?,
                Some(addr) => self.on_node(addr, &scan).await?,
            };
            if !keys.is_empty() {
                // On a cluster the client splits a multi-slot UNLINK and sums.
                let n: i64 = self.query(redis::cmd("UNLINK").arg(&keys)).await?;
                total += u64::try_from(n).unwrap_or(0);
            }
            if next == "0" {
                return Ok(total);
            }
            cursor = next;
        }
    }

    pub(crate) async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let ms = ttl.map(ttl_ms).transpose()?.unwrap_or(0);
        let mut inv = CAS.prepare_invoke();
        inv.key(key)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(new.as_ref())
            .arg(ms);
        let n: i64 = self.run(async |c| inv.invoke_async(c).await).await?;
        Ok(n == 1)
    }

    async fn gcra(
        &self,
        checks: &[(&str, Params)],
        mode: u8,
    ) -> Result<Vec<RateDecision>, StoreError> {
        let mut inv = GCRA.prepare_invoke();
        inv.arg(mode);
        for (k, p) in checks {
            inv.key(*k).arg(p.t).arg(p.tau).arg(p.cost).arg(p.limit);
        }
        let raw: Vec<i64> = self.run(async |c| inv.invoke_async(c).await).await?;
        if raw.len() != checks.len() * 4 {
            return Err(StoreError::BadData(format!(
                "rate-limit script returned {} values for {} checks",
                raw.len(),
                checks.len()
            )));
        }
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(raw
            .chunks_exact(4)
            .zip(checks)
            .map(|(r, (_, p))| RateDecision {
                allowed: r[0] == 1,
                limit: p.limit,
                remaining: u32::try_from(r[1]).unwrap_or(0),
                reset_after: us(r[2]),
                retry_after: (r[3] >= 0).then(|| us(r[3])),
            })
            .collect())
    }

    pub(crate) async fn rate_limit(
        &self,
        key: &str,
        p: Params,
    ) -> Result<RateDecision, StoreError> {
        let mut d = self.gcra(&[(key, p)], 0).await?;
        d.pop()
            .ok_or_else(|| StoreError::BadData("empty rate-limit reply".into()))
    }

    /// Single node, or a cluster with every key in one slot: one script, one
    /// round trip, atomic. Cluster across slots: see `Store::rate_limit_many`.
    pub(crate) async fn rate_limit_many(
        &self,
        checks: &[(&str, Params)],
    ) -> Result<Vec<RateDecision>, StoreError> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let one_slot = match self.conn {
            Conn::Single(_) => true,
            Conn::Cluster(_) => {
                let first = slot_of(checks[0].0);
                checks.iter().all(|(k, _)| slot_of(k) == first)
            }
        };
        if one_slot {
            return self.gcra(checks, 0).await;
        }
        // Group by slot, keeping each check's index.
        let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
        for (i, (k, _)) in checks.iter().enumerate() {
            groups.entry(slot_of(k)).or_default().push(i);
        }
        let groups: Vec<Vec<(usize, (&str, Params))>> = groups
            .into_values()
            .map(|g| g.into_iter().map(|i| (i, checks[i])).collect())
            .collect();
        let run_all = |mode: u8| {
            try_join_all(groups.iter().map(move |g| async move {
                let cs: Vec<(&str, Params)> = g.iter().map(|(_, c)| *c).collect();
                self.gcra(&cs, mode).await
            }))
        };
        let assemble = |per_group: &[Vec<RateDecision>]| {
            let mut out = vec![None; checks.len()];
            for (g, ds) in groups.iter().zip(per_group) {
                for ((i, _), d) in g.iter().zip(ds) {
                    out[*i] = Some(*d);
                }
            }
            out.into_iter().flatten().collect::<Vec<_>>()
        };
        // Phase 1: peek every group; any denial ends it with nothing consumed.
        let peeked = run_all(1).await?;
        if !peeked.iter().flatten().all(|d| d.allowed) {
            return Ok(assemble(&peeked));
        }
        // Phase 2: consume every group (each atomic in its slot).
        let consumed = run_all(0).await?;
        if consumed.iter().flatten().all(|d| d.allowed) {
            return Ok(assemble(&consumed));
        }
        // Lost a race in some slot: give back what the other groups took,
        // and report their state after the refund.
        tracing::debug!(
            groups = groups.len(),
            "cross-slot rate limit lost a race; refunding"
        );
        let results = try_join_all(groups.iter().zip(consumed).map(|(g, ds)| async move {
            if !ds.iter().all(|d| d.allowed) {
                return Ok(ds);
            }
            let mut inv = REFUND.prepare_invoke();
            for (_, (k, p)) in g {
                inv.key(*k).arg(p.cost * p.t);
            }
            let _: i64 = self.run(async |c| inv.invoke_async(c).await).await?;
            let cs: Vec<(&str, Params)> = g.iter().map(|(_, c)| *c).collect();
            self.gcra(&cs, 1).await
        }))
        .await?;
        Ok(assemble(&results))
    }

    pub(crate) async fn token_reserve(
        &self,
        key: &str,
        p: TokenParams,
        amount: u64,
    ) -> Result<TokenDecision, StoreError> {
        let leases = lease_key(key)?;
        let mut inv = TOKEN_RESERVE.prepare_invoke();
        inv.key(key)
            .key(&leases)
            .arg(p.t)
            .arg(p.tau)
            .arg(amount)
            .arg(p.lease);
        let (admitted, id, remaining, reset, retry): (i64, String, i64, i64, i64) =
            self.run(async |c| inv.invoke_async(c).await).await?;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(TokenDecision {
            reservation: (admitted == 1).then(|| TokenReservation::new(id, amount)),
            quota: p.quota,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset_after: us(reset),
            retry_after: (retry >= 0).then(|| us(retry)),
        })
    }

    pub(crate) async fn token_settle(
        &self,
        key: &str,
        p: TokenParams,
        reservation: &TokenReservation,
        actual: u64,
    ) -> Result<TokenSettlement, StoreError> {
        let leases = lease_key(key)?;
        let mut inv = TOKEN_SETTLE.prepare_invoke();
        inv.key(key)
            .key(&leases)
            .arg(p.t)
            .arg(p.tau)
            .arg(reservation.id())
            .arg(actual);
        let (held, refunded, remaining, reset): (i64, i64, i64, i64) =
            self.run(async |c| inv.invoke_async(c).await).await?;
        Ok(TokenSettlement {
            held: held == 1,
            charged: actual,
            refunded: u64::try_from(refunded).unwrap_or(0),
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset_after: Duration::from_micros(u64::try_from(reset).unwrap_or(0)),
        })
    }

    pub(crate) async fn stream_append(
        &self,
        stream: &str,
        fields: &[(&str, &[u8])],
        max_len: usize,
    ) -> Result<String, StoreError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg("MAXLEN").arg("~").arg(max_len).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        self.query(&cmd).await
    }

    pub(crate) async fn stream_read(
        &self,
        stream: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let v: Value = self
            .query(
                redis::cmd("XREVRANGE")
                    .arg(stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        let bad = || StoreError::BadData("unexpected XREVRANGE reply".into());
        let Value::Array(items) = v else {
            return Err(bad());
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.into_iter().rev() {
            let Value::Array(mut pair) = item else {
                return Err(bad());
            };
            if pair.len() != 2 {
                return Err(bad());
            }
            let fields = pair.pop().ok_or_else(bad)?;
            let id: String =
                redis::from_redis_value(pair.pop().ok_or_else(bad)?).map_err(|_| bad())?;
            let flat: Vec<Vec<u8>> = redis::from_redis_value(fields).map_err(|_| bad())?;
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                fields.push((String::from_utf8_lossy(&k).into_owned(), Bytes::from(v)));
            }
            out.push(StreamEntry { id, fields });
        }
        Ok(out)
    }

    pub(crate) async fn stream_len(&self, stream: &str) -> Result<u64, StoreError> {
        self.query(redis::cmd("XLEN").arg(stream)).await
    }

    /// Single node: PING. Cluster: PING every master that serves slots, by
    /// address, so a dead master fails it.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        match &self.conn {
            Conn::Single(_) => {
                let _: Value = self.query(&redis::cmd("PING")).await?;
            }
            Conn::Cluster(_) => {
                let masters = self.masters().await?;
                let ping = redis::cmd("PING");
                try_join_all(
                    masters
                        .iter()
                        .map(|addr| self.on_node::<Value>(addr, &ping)),
                )
                .await?;
            }
        }
        Ok(())
    }
}

fn slot_of(key: &str) -> Slot {
    Slot::for_key(key)
}
