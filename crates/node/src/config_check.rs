//! Range checks of every number in `node.toml` that the tables' own types do not bound: a
//! negative number is already a parse error (the fields are unsigned), but zero, NaN, infinity
//! or an absurdly large value would otherwise be clamped in silence, overflow a clock, or panic
//! deep inside the node. Each error names the table and the field.

use std::ops::RangeInclusive;

use crate::config::NodeConfig;

/// Largest end-to-end pool per destination (`[pool] target_bytes`): 1 GiB, far beyond what a
/// node should hold in memory per destination.
pub const MAX_POOL_TARGET_BYTES: u64 = 1 << 30;
/// Bounds of `[pool] relay_chunk_bytes` (a relay message's key).
pub const RELAY_CHUNK_RANGE: RangeInclusive<u64> = 32..=(1 << 20);
/// Bounds of `[pool] max_in_flight`.
pub const MAX_IN_FLIGHT_RANGE: RangeInclusive<u64> = 1..=1024;
/// Bounds of `[peers] idle_close_s` (a day at most).
pub const IDLE_CLOSE_RANGE: RangeInclusive<u64> = 1..=86_400;

fn range(table: &str, field: &str, v: u64, r: RangeInclusive<u64>) -> Result<(), String> {
    if r.contains(&v) {
        return Ok(());
    }
    Err(format!(
        "[{table}] {field} = {v} must be between {} and {}",
        r.start(),
        r.end()
    ))
}

/// Checks a listen address `HOST:PORT` with a port in 1..=65535 (a port of 0 would listen
/// somewhere nobody knows).
pub fn check_listen(table: &str, field: &str, addr: &str) -> Result<(), String> {
    let port = addr
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, p)| p.parse::<u16>().ok());
    match port {
        Some(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "[{table}] {field} = {addr:?} must be HOST:PORT with a port between 1 and 65535"
        )),
    }
}

/// Checks the numbers of `cfg` that serde and the tables' own `validate` do not.
pub fn check(cfg: &NodeConfig) -> Result<(), String> {
    let p = &cfg.pool;
    range(
        "pool",
        "target_bytes",
        p.target_bytes,
        1..=MAX_POOL_TARGET_BYTES,
    )?;
    if !(p.low_water.is_finite() && p.low_water > 0.0 && p.low_water <= 1.0) {
        return Err(format!(
            "[pool] low_water = {} must be a fraction above 0 and at most 1",
            p.low_water
        ));
    }
    range(
        "pool",
        "relay_chunk_bytes",
        p.relay_chunk_bytes,
        RELAY_CHUNK_RANGE,
    )?;
    range(
        "pool",
        "max_in_flight",
        u64::from(p.max_in_flight),
        MAX_IN_FLIGHT_RANGE,
    )?;
    range(
        "peers",
        "idle_close_s",
        cfg.peers.idle_close_s,
        IDLE_CLOSE_RANGE,
    )?;
    if let Some(a) = &cfg.skip_addr {
        check_listen("node", "skip_addr", a)?;
    }
    if let Some(m) = &cfg.management {
        check_listen("management", "listen", &m.listen)?;
    }
    if let Some(e) = &cfg.etsi004 {
        check_listen("etsi004", "listen", &e.listen)?;
        let t = "etsi004";
        range(t, "max_streams", e.max_streams as u64, 1..=1 << 20)?;
        range(
            t,
            "max_streams_per_sae",
            e.max_streams_per_sae as u64,
            1..=e.max_streams as u64,
        )?;
        range(
            t,
            "max_waiting_per_sae",
            e.max_waiting_per_sae as u64,
            1..=1024,
        )?;
        range(t, "max_chunk_bytes", e.max_chunk_bytes.into(), 1..=1 << 20)?;
        range(t, "max_timeout_ms", e.max_timeout_ms.into(), 1..=3_600_000)?;
        range(t, "max_ttl_s", e.max_ttl_s.into(), 1..=30 * 86_400)?;
        range(t, "window", e.window.into(), 1..=4096)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::NodeConfig;

    const BASE: &str = "node_id = \"a\"\ntopology = \"t.toml\"\ndata_dir = \"d\"\n";
    const TLS: &str = "[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n";

    /// Loads a `node.toml` made of `top` (top-level keys) and `tables`; the error text.
    fn load_err(dir: &std::path::Path, top: &str, tables: &str) -> String {
        let path = dir.join("node.toml");
        std::fs::write(&path, format!("{BASE}{top}\n{TLS}{tables}\n")).unwrap();
        match NodeConfig::load(&path) {
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        }
    }

    /// Every number in `node.toml` that can be negative, zero, NaN, infinite or absurdly
    /// large: a config error naming the file, the table and the field, never a panic.
    #[test]
    fn every_bad_number_is_a_config_error_naming_file_table_and_field() {
        let dir = crate::tls::tests::tempdir::Dir::new("config-numbers");
        assert_eq!(load_err(dir.path(), "", ""), "", "the base config loads");
        let huge = "99999999999999999999";
        let cases: Vec<(&str, String, &[&str])> = vec![
            // [pool]
            (
                "",
                "[pool]\ntarget_bytes = 0".into(),
                &["[pool]", "target_bytes"],
            ),
            ("", "[pool]\ntarget_bytes = -1".into(), &["target_bytes"]),
            (
                "",
                format!("[pool]\ntarget_bytes = {huge}"),
                &["target_bytes"],
            ),
            (
                "",
                "[pool]\ntarget_bytes = 1099511627776".into(),
                &["[pool]", "target_bytes"],
            ),
            (
                "",
                "[pool]\nlow_water = nan".into(),
                &["[pool]", "low_water"],
            ),
            (
                "",
                "[pool]\nlow_water = inf".into(),
                &["[pool]", "low_water"],
            ),
            (
                "",
                "[pool]\nlow_water = -0.5".into(),
                &["[pool]", "low_water"],
            ),
            (
                "",
                "[pool]\nlow_water = 0.0".into(),
                &["[pool]", "low_water"],
            ),
            (
                "",
                "[pool]\nlow_water = 1.5".into(),
                &["[pool]", "low_water"],
            ),
            (
                "",
                "[pool]\nrelay_chunk_bytes = 0".into(),
                &["[pool]", "relay_chunk_bytes"],
            ),
            (
                "",
                "[pool]\nrelay_chunk_bytes = 4294967296".into(),
                &["[pool]", "relay_chunk_bytes"],
            ),
            (
                "",
                "[pool]\nmax_in_flight = 0".into(),
                &["[pool]", "max_in_flight"],
            ),
            (
                "",
                "[pool]\nmax_in_flight = 4294967296".into(),
                &["max_in_flight"],
            ),
            (
                "",
                "[pool]\nmax_in_flight = 100000".into(),
                &["[pool]", "max_in_flight"],
            ),
            (
                "",
                "[pool]\nlink_grant_reserve_bytes = 0".into(),
                &["[pool]", "link_grant_reserve_bytes"],
            ),
            // [peers]
            (
                "",
                "[peers]\nidle_close_s = 0".into(),
                &["[peers]", "idle_close_s"],
            ),
            (
                "",
                format!("[peers]\nidle_close_s = {}", u64::MAX / 2),
                &["[peers]", "idle_close_s"],
            ),
            // [routing]
            ("", "[routing]\npaths = 0".into(), &["[routing]", "paths"]),
            ("", "[routing]\npaths = 300".into(), &["paths"]),
            (
                "",
                "[routing]\npaths = 3\nthreshold = 4".into(),
                &["[routing]", "threshold"],
            ),
            // [delivery]
            (
                "",
                "[delivery]\ngrace_s = 999999".into(),
                &["[delivery]", "grace_s"],
            ),
            (
                "",
                "[delivery]\nslave_key_lifetime_s = -1".into(),
                &["slave_key_lifetime_s"],
            ),
            // [etsi014]
            (
                "",
                "[etsi014]\nmax_key_per_request = 0".into(),
                &["[etsi014]", "max_key_per_request"],
            ),
            (
                "",
                "[etsi014]\nkey_size = 0".into(),
                &["[etsi014]", "key_size"],
            ),
            (
                "",
                format!("[etsi014]\nmax_key_size = {}", u64::MAX / 2),
                &["[etsi014]", "max_key_size"],
            ),
            // [quotas]
            (
                "",
                "[quotas.sae.x]\nbytes_per_second = -1".into(),
                &["bytes_per_second"],
            ),
            (
                "",
                "[quotas.sae.x]\nbytes_per_second = 0".into(),
                &["[quotas]", "quotas.sae.\"x\"", "burst_bytes"],
            ),
            (
                "",
                format!("[quotas.sae.x]\nbytes_per_second = {}", 1u64 << 50),
                &["[quotas]", "bytes_per_second"],
            ),
            (
                "",
                "[quotas.pair.x.y]\nbytes_per_second = 1\nburst_bytes = 0".into(),
                &["[quotas]", "quotas.pair.\"x\".\"y\"", "burst_bytes"],
            ),
            (
                "",
                format!("[quotas.pair.x.y]\ndaily_bytes = {}", 1u64 << 50),
                &["[quotas]", "daily_bytes"],
            ),
            (
                "",
                "[quotas]\ndefault = { bytes_per_second = 1, burst_bytes = 0 }".into(),
                &["[quotas]", "quotas.default", "burst_bytes"],
            ),
            (
                "",
                "[quotas.reserve]\nlow_percent = 101".into(),
                &["[quotas]", "low_percent"],
            ),
            (
                "",
                "[quotas.reserve]\nlow_percent = 300".into(),
                &["low_percent"],
            ),
            (
                "",
                "[quotas.reserve]\nlow_percent = 50".into(),
                &["[quotas.reserve]", "low_percent", "low_water"],
            ),
            (
                "",
                "[quotas.reserve]\nnormal_percent = 20\nlow_percent = 10".into(),
                &["[quotas]", "normal_percent"],
            ),
            // [etsi004]
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:0\"".into(),
                &["[etsi004]", "listen"],
            ),
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:9004\"\nmax_chunk_bytes = 0".into(),
                &["[etsi004]", "max_chunk_bytes"],
            ),
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:9004\"\nmax_streams = 0".into(),
                &["[etsi004]", "max_streams"],
            ),
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:9004\"\nmax_streams_per_sae = 5000".into(),
                &["[etsi004]", "max_streams_per_sae"],
            ),
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:9004\"\nmax_waiting_per_sae = 0".into(),
                &["[etsi004]", "max_waiting_per_sae"],
            ),
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:9004\"\nmax_timeout_ms = 0".into(),
                &["[etsi004]", "max_timeout_ms"],
            ),
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:9004\"\nmax_ttl_s = 0".into(),
                &["[etsi004]", "max_ttl_s"],
            ),
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:9004\"\nwindow = 0".into(),
                &["[etsi004]", "window"],
            ),
            (
                "",
                "[etsi004]\nlisten = \"127.0.0.1:9004\"\nwindow = -3".into(),
                &["window"],
            ),
            // Listen addresses.
            (
                "skip_addr = \"127.0.0.1:99999\"",
                String::new(),
                &["skip_addr"],
            ),
            (
                "",
                "[management]\nlisten = \"localhost\"".into(),
                &["[management]", "listen"],
            ),
            // [tamper]
            (
                "",
                "[tamper]\nintegrity_failures = -1".into(),
                &["integrity_failures"],
            ),
        ];
        for (top, tables, want) in &cases {
            let err = load_err(dir.path(), top, tables);
            assert!(!err.is_empty(), "{top}{tables}: accepted");
            assert!(err.contains("node.toml"), "{top}{tables}: {err}");
            for w in *want {
                assert!(err.contains(w), "{top}{tables}: {err:?} does not name {w}");
            }
        }
    }
}
