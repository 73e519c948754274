//! `kagi node`: wires the driver, store, peers, link sources and the ETSI 014 server together.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::collections::BTreeMap;

use kagi_control::{KeySource, LinkSpec, Topology};
use kagi_km::record::Record;
use kagi_km::Input;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::admission::{Admission, Limits};
use crate::audit::{AuditTrail, Event};
use crate::config::NodeConfig;
use crate::device_link::{DeviceLink, DeviceLinkConfig};
use crate::driver::{km_config, Driver, DriverMsg};
use crate::link_source::SimulatedLink;
use crate::peer::{accept_loop, Peers};
use crate::photon_link::{PhotonLink, PhotonLinkConfig};
use crate::{etsi014, tls};
use kagi_km::NodeId;

/// Runs one key manager node until `shutdown` resolves.
pub async fn run_node(
    mut cfg: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cfg.topology)
        .map_err(|e| anyhow::anyhow!("cannot read topology {}: {e}", cfg.topology.display()))?;
    let topo = Arc::new(
        Topology::from_toml(&text)
            .map_err(|e| anyhow::anyhow!("topology {}: {e}", cfg.topology.display()))?,
    );
    let me = topo
        .node(&cfg.node_id)
        .ok_or_else(|| anyhow::anyhow!("node {} is not in the topology", cfg.node_id))?
        .clone();
    std::fs::create_dir_all(&cfg.data_dir)?;
    let db = cfg.data_dir.join(format!("{}.db", cfg.node_id));
    let ledger_db = cfg.data_dir.join(format!("{}-photon.db", cfg.node_id));
    let has_photon = topo
        .neighbours(&me.id)
        .any(|(_, l)| l.key_source().ok() == Some(KeySource::Photon));
    let mut seals = crate::seal::node::unseal_node(&cfg, &db, has_photon.then_some(&*ledger_db))?;
    // Every simulated link's secret, settled before anything listens: a link without one is
    // refused (unless the topology is an explicit insecure demo).
    let mut provisioned = std::mem::take(&mut seals.link_secrets);
    if topo.insecure_demo_links {
        tracing::warn!(
            "insecure_demo_links = true: links without a provisioned secret derive their key \
             from the topology's public seed, so anyone holding the topology file can compute it"
        );
    }
    let mut link_secrets = BTreeMap::new();
    for (peer, spec) in topo.neighbours(&me.id) {
        let secret = provisioned.remove(peer);
        if secret.is_none() && topo.insecure_demo_links {
            tracing::warn!(link = %format!("{}-{}", spec.a, spec.b), "no per-link secret: INSECURE demo key");
        }
        link_secrets.insert(
            peer.to_string(),
            crate::link_secret::for_link(&topo, spec, secret)?,
        );
    }
    drop(provisioned);
    let mut secret_for = |spec: &LinkSpec| {
        let peer = if spec.a == me.id { &spec.b } else { &spec.a };
        link_secrets
            .remove(peer.as_str())
            .ok_or_else(|| anyhow::anyhow!("link {}-{} keyed twice", spec.a, spec.b))
    };
    let ops = Arc::new(crate::mgmt::Ops::new(&cfg.node_id));
    // The operator's switches come back before the core starts routing.
    let admin = ops.restore_admin(crate::mgmt::admin_store::AdminStore::open(
        &crate::mgmt::admin_store::admin_db_path(&cfg.data_dir, &cfg.node_id),
    )?)?;
    for peer in &admin.links_out {
        tracing::warn!(%peer, "link out of service (operator's choice, kept across restarts; `kagi net link` puts it back)");
    }
    if admin.draining {
        tracing::warn!("node is draining (operator's choice, kept across restarts): new enc_keys refused until `kagi net drain {} --undo`", cfg.node_id);
    }
    // Key rate limits set through the management API replace node.toml's for the same SAE or
    // pair, now and after every SIGHUP, until the operator drops them (DELETE).
    for sae in admin.limits.sae.keys() {
        tracing::warn!(%sae, "key rate limit set through the management API (kept across restarts) replaces node.toml's");
    }
    for (master, slaves) in &admin.limits.pair {
        for slave in slaves.keys() {
            tracing::warn!(%master, %slave, "pair key rate limit set through the management API (kept across restarts) replaces node.toml's");
        }
    }
    cfg.quotas = ops.set_file_quotas(cfg.quotas.clone());
    cfg.quotas
        .validate()
        .map_err(|e| anyhow::anyhow!("[quotas] with the management API's overrides: {e}"))?;
    // The audit trail: an existing one that does not verify refuses the start (tampering).
    let trail = Arc::new(AuditTrail::open(
        &crate::audit::trail_path(&cfg.data_dir, &cfg.node_id),
        &cfg.node_id,
        seals.audit_signer.clone(),
        crate::audit::Policy::default(),
    )?);
    trail.record(Event::node(
        "seal.unseal",
        &cfg.node_id,
        &format!("kek={}", seals.kek_kind),
    ))?;
    ops.set_trail(trail.clone());
    if cfg.store.synchronous.is_unsafe() {
        tracing::warn!(
            "[store] synchronous = \"unsafe-normal\": a power loss can roll back commits whose \
             keys were already delivered, and this node would deliver them again; use \"full\" \
             outside test rigs"
        );
    }
    let mut km_cfg = km_config(&cfg, topo.clone());
    km_cfg.advert_auth = crate::advert_keys::from_config(&cfg, &topo)?;
    if km_cfg.advert_auth.is_none() {
        tracing::warn!(
            "link-state adverts are NOT signed ([link_state] signing_key and public_keys unset): \
             any node on the way can forge or alter other nodes' adverts and steer routes; \
             `kagi pki advert-keys` issues the keys (kagi up sets them)"
        );
    }
    let mut driver = Driver::new(km_cfg, &db, cfg.store.synchronous, seals.store.clone())
        .with_ops(ops.clone())
        .with_audit(trail.clone())
        .with_erase(crate::seal::erase::EraseTargets::for_node(&cfg))
        .with_integrity_threshold(cfg.tamper.integrity_failures);
    let handle = driver.handle();
    let inbox = handle.inbox();
    #[cfg(unix)]
    let reload = cfg.source.clone().map(|path| {
        tokio::spawn(reload_quotas_on_sighup(
            path,
            handle.clone(),
            trail.clone(),
            ops.clone(),
        ))
    });

    // Peers: listen, and one outbound channel per other node.
    let peer_addr = me
        .peer_addr
        .clone()
        .ok_or_else(|| anyhow::anyhow!("node {} has no peer_addr", me.id))?;
    let peer_listener = TcpListener::bind(&peer_addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind {peer_addr}: {e}"))?;
    let known: Arc<Vec<String>> = Arc::new(topo.nodes.iter().map(|n| n.id.clone()).collect());
    let my_links: Vec<LinkSpec> = topo.neighbours(&me.id).map(|(_, l)| l.clone()).collect();
    let mut photon = Vec::new();
    let mut devices = Vec::new();
    let mut link_inboxes = BTreeMap::new();
    for spec in &my_links {
        if spec.key_source().map_err(|e| anyhow::anyhow!(e))? == KeySource::Device {
            let dc = DeviceLinkConfig::new(&me.id, spec).map_err(|e| anyhow::anyhow!(e))?;
            let tls = crate::device_link::device_tls(spec.device.as_ref(), &cfg.tls)?;
            // The protocol has one offer in flight; a few frames of slack.
            let (tx, rx) = mpsc::channel(8);
            link_inboxes.insert(dc.peer.clone(), tx);
            devices.push((dc, tls, rx));
            continue;
        }
        if spec.key_source().map_err(|e| anyhow::anyhow!(e))? == KeySource::Photon {
            let pc = PhotonLinkConfig::new(&topo, &me.id, spec, secret_for(spec)?)?;
            let (tx, rx) = crate::peer::link_inbox();
            link_inboxes.insert(pc.peer.clone(), tx);
            photon.push((pc, rx));
        }
    }
    // ETSI 004 stream messages from other nodes; a few hundred queued, the rest dropped (the
    // waiting side re-sends).
    let (stream_tx, stream_rx) = mpsc::channel(256);
    // Aborted at shutdown so the port is free for a restart in the same process.
    let peer_accept = tokio::spawn(accept_loop(
        peer_listener,
        tls::peer_server_config(&cfg.tls)?,
        known,
        handle.peer_inbox(),
        Arc::new(link_inboxes),
        cfg.etsi004.is_some().then_some(stream_tx),
        Admission::new("peer", Limits::PEERS),
        Some(Arc::new(crate::audit::witness::Witness::new(trail.clone()))),
    ));
    let others: Vec<(String, String)> = topo
        .nodes
        .iter()
        .filter(|n| n.id != me.id)
        .filter_map(|n| n.peer_addr.clone().map(|a| (n.id.clone(), a)))
        .collect();
    // With `[peers] connect = "neighbours"`, only neighbours are connected all the time.
    let on_demand: std::collections::BTreeSet<String> = match cfg.peers.connect {
        crate::config::PeerConnect::All => Default::default(),
        crate::config::PeerConnect::Neighbours => others
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| topo.link(&me.id, n).is_none())
            .collect(),
    };
    let peers = Peers::start_with(
        others,
        tls::peer_client_config(&cfg.tls)?,
        inbox.clone(),
        &on_demand,
        Duration::from_secs(cfg.peers.idle_close_s.max(1)),
    );
    // Every checkpoint goes to the neighbours, who witness it in their own trails.
    {
        let neighbours: Vec<String> = topo.neighbours(&me.id).map(|(n, _)| n.to_owned()).collect();
        let peers = peers.clone();
        let public = seals.audit_signer.public().to_vec();
        trail.on_checkpoint(Box::new(move |line| {
            let frame = crate::audit::witness::frame(line, &public);
            for n in &neighbours {
                peers.send_audit(n, frame.clone());
            }
        }));
    }

    // Simulated links, resuming after the highest stored block.
    let snap = driver.snapshot()?;
    let high_water = |p: &str| {
        snap.records.iter().find_map(|r| match r {
            Record::LinkHighWater { peer, block } if peer == p => Some(*block),
            _ => None,
        })
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mut model_rates = BTreeMap::new();
    for spec in &my_links {
        if spec.key_source().ok() != Some(KeySource::Rate) {
            continue;
        }
        let link = SimulatedLink::new(&topo, &me.id, spec, secret_for(spec)?)
            .map_err(|e| anyhow::anyhow!("link {}-{}: {e}", spec.a, spec.b))?;
        let hw = high_water(&link.peer);
        tracing::info!(peer = %link.peer, km = spec.length_km, protocol = %link.protocol, rate_bps = link.rate_bps, "simulated QKD link");
        model_rates.insert(link.peer.clone(), link.rate_bps);
        tokio::spawn(feed_link(link, hw, inbox.clone(), stop_rx.clone()));
    }
    for (dc, tls, rx) in devices {
        let hw = high_water(&dc.peer);
        let link = DeviceLink::new(dc, tls, hw, peers.clone(), inbox.clone(), rx, ops.clone())?;
        tokio::spawn(link.run(stop_rx.clone()));
    }
    for (pc, rx) in photon {
        let hw = high_water(&pc.peer);
        let link = PhotonLink::open(
            pc,
            &ledger_db,
            seals
                .photon
                .clone()
                .ok_or_else(|| anyhow::anyhow!("photon ledger not unsealed"))?,
            hw,
            peers.clone(),
            inbox.clone(),
            rx,
        )?;
        tokio::spawn(link.run(stop_rx.clone()));
    }

    // ETSI GS QKD 014.
    let etsi_addr = me
        .etsi014_addr
        .clone()
        .ok_or_else(|| anyhow::anyhow!("node {} has no etsi014_addr", me.id))?;
    let etsi_listener = TcpListener::bind(&etsi_addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind {etsi_addr}: {e}"))?;
    let (sd_tx, sd_rx) = watch::channel(false);
    let mut sd_rx2 = sd_rx.clone();
    // ETSI 004 key streams (served below), shared with the management view.
    let streams = cfg.etsi004.as_ref().map(|c| {
        crate::etsi004::Streams::new(
            me.id.clone(),
            topo.clone(),
            c.clone(),
            handle.clone(),
            peers.clone(),
        )
    });
    let mgmt = match &cfg.management {
        Some(m) => {
            let l = TcpListener::bind(&m.listen)
                .await
                .map_err(|e| anyhow::anyhow!("bind management {}: {e}", m.listen))?;
            let ctx = Arc::new(crate::mgmt::MgmtCtx {
                ops: ops.clone(),
                driver: handle.clone(),
                topology: topo.clone(),
                etsi014: cfg.etsi014.clone(),
                model_rates,
                streams: streams
                    .clone()
                    .map(|s| s as Arc<dyn crate::etsi004::StreamsView>),
            });
            let mut rx = sd_rx.clone();
            Some(tokio::spawn(crate::mgmt::serve(
                l,
                tls::mgmt_server_config(&cfg.tls)?,
                ctx,
                async move {
                    let _ = rx.wait_for(|v| *v).await;
                },
            )))
        }
        None => None,
    };
    let etsi = tokio::spawn(etsi014::serve_observed(
        etsi_listener,
        if cfg.etsi014.require_pq {
            tls::etsi_server_config_pq_only(&cfg.tls)?
        } else {
            tls::etsi_server_config(&cfg.tls)?
        },
        cfg.etsi014.clone(),
        topo.clone(),
        handle.clone(),
        Admission::new("etsi014", Limits::APPLICATIONS),
        Some(ops.clone()),
        async move {
            let _ = sd_rx2.wait_for(|v| *v).await;
        },
    ));
    // Cisco SKIP, when configured: the same key service as ETSI 014.
    let skip = match &cfg.skip_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("bind SKIP {addr}: {e}"))?;
            let mut sd = sd_rx.clone();
            Some(tokio::spawn(crate::skip::serve(
                l,
                crate::skip::server_config(&cfg.tls)?,
                cfg.etsi014.clone(),
                topo.clone(),
                handle.clone(),
                async move {
                    let _ = sd.wait_for(|v| *v).await;
                },
            )))
        }
        None => None,
    };
    // ETSI GS QKD 004 key streams, when configured: the same key service again.
    let etsi004 = match &cfg.etsi004 {
        Some(c) => {
            let l = TcpListener::bind(&c.listen)
                .await
                .map_err(|e| anyhow::anyhow!("bind ETSI 004 {}: {e}", c.listen))?;
            let streams = streams
                .clone()
                .ok_or_else(|| anyhow::anyhow!("ETSI 004 streams not set up"))?;
            let mut sd = sd_rx.clone();
            Some(tokio::spawn(crate::etsi004::serve(
                l,
                if cfg.etsi014.require_pq {
                    tls::etsi_server_config_pq_only(&cfg.tls)?
                } else {
                    tls::etsi_server_config(&cfg.tls)?
                },
                cfg.etsi014.clone(),
                topo.clone(),
                streams,
                stream_rx,
                Admission::new("etsi004", Limits::APPLICATIONS),
                async move {
                    let _ = sd.wait_for(|v| *v).await;
                },
            )))
        }
        None => None,
    };
    tracing::info!(node = %me.id, etsi014 = %etsi_addr, peers = %peer_addr, skip = ?cfg.skip_addr, etsi004 = ?cfg.etsi004.as_ref().map(|c| &c.listen), "kagi node up");
    trail.record(Event::node(
        "node.start",
        &me.id,
        &format!("etsi014={etsi_addr}"),
    ))?;
    // Tamper response outside the driver: link sources stop and the photon ledger's key goes.
    {
        let mut fenced = ops.tamper_signal();
        let stop_tx = stop_tx.clone();
        let photon = seals.photon.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = fenced.wait_for(|v| *v) => {
                    if r.is_ok() {
                        let _ = stop_tx.send(true);
                        if let Some(p) = photon {
                            p.wipe();
                        }
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
    if let Some(path) = cfg.tamper.watch_path.clone() {
        tokio::spawn(watch_tamper_path(path, handle.clone(), stop_rx.clone()));
    }
    #[cfg(unix)]
    if cfg.tamper.sigusr1 {
        tokio::spawn(tamper_on_sigusr1(handle.clone(), stop_rx.clone()));
    }
    // Timed checkpoints.
    let ticker = {
        let trail = trail.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = trail.tick() {
                    tracing::error!(error = %e, "audit checkpoint failed");
                }
            }
        })
    };

    let mut sd_rx3 = sd_rx;
    let result = driver
        .run(peers, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = sd_rx3.wait_for(|v| *v) => {}
            }
        })
        .await;
    let _ = sd_tx.send(true);
    let _ = stop_tx.send(true);
    // Every listener is closed before returning, so a restart in the same process (tests, an
    // embedding service) can bind the same ports again.
    peer_accept.abort();
    let _ = peer_accept.await;
    #[cfg(unix)]
    if let Some(r) = reload {
        r.abort();
    }
    stop_within(etsi, Duration::from_secs(2)).await;
    if let Some(skip) = skip {
        stop_within(skip, Duration::from_secs(2)).await;
    }
    if let Some(e) = etsi004 {
        stop_within(e, Duration::from_secs(2)).await;
    }
    if let Some(m) = mgmt {
        stop_within(m, Duration::from_secs(2)).await;
    }
    let _ = ticker.await;
    // A clean stop ends the trail with a signed checkpoint.
    if let Err(e) = trail.close() {
        tracing::error!(error = %e, "final audit checkpoint failed");
    }
    result
}

/// Lets a server task finish its graceful shutdown within `grace`, then aborts it; returns only
/// once the task, and the listener it owns, is gone.
async fn stop_within<T>(mut task: tokio::task::JoinHandle<T>, grace: Duration) {
    if tokio::time::timeout(grace, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

/// Fences the node on SIGUSR1 (`[tamper] sigusr1`), the signal an intrusion sensor's daemon
/// sends; the handler is registered for the node's life, so a second SIGUSR1 is ignored too.
#[cfg(unix)]
async fn tamper_on_sigusr1(driver: crate::driver::DriverHandle, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("no SIGUSR1 handler: the tamper signal by SIGUSR1 is not available");
        return;
    };
    tokio::select! {
        r = usr1.recv() => {
            if r.is_some() {
                tracing::error!("tamper signal: SIGUSR1");
                driver.tamper("signal", "SIGUSR1 received").await;
            }
        }
        _ = stop.changed() => {}
    }
}

/// Fences the node when `path` appears (polled every 200 ms; a path present at start fences it
/// at once).
async fn watch_tamper_path(
    path: std::path::PathBuf,
    driver: crate::driver::DriverHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if path.exists() {
            let reason = format!("{} appeared", path.display());
            tracing::error!(%reason, "tamper switch");
            driver.tamper("watch_path", &reason).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn feed_link(
    mut link: SimulatedLink,
    hw: Option<u64>,
    inbox: mpsc::UnboundedSender<DriverMsg>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = link.first_block(hw, SystemTime::now());
    let mut announced = f64::NAN;
    loop {
        let Some((n, due)) = link.next_block(next) else {
            tracing::warn!(peer = %link.peer, protocol = %link.protocol, "link yields no key");
            return;
        };
        if let Some(p) = link.next_pass(SystemTime::now()) {
            let now = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            if p.start_unix > now && p.start_unix != announced {
                announced = p.start_unix;
                tracing::info!(peer = %link.peer, in_s = p.start_unix - now, clear = p.clear, "next satellite pass");
            }
        }
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let msg = DriverMsg::Input(Input::LinkKeys {
            peer: NodeId::from(&link.peer),
            block: n,
            key: link.block(n),
        });
        if inbox.send(msg).is_err() {
            return;
        }
        next = n + 1;
    }
}

/// On every SIGHUP, re-reads `[quotas]` from the node's config file and applies it, with the
/// management API's overrides on top, without a restart; a file that does not load or validate
/// leaves the limits unchanged (and says why).
#[cfg(unix)]
async fn reload_quotas_on_sighup(
    path: std::path::PathBuf,
    driver: crate::driver::DriverHandle,
    trail: Arc<AuditTrail>,
    ops: Arc<crate::mgmt::Ops>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: per-SAE limits cannot be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        let file = match NodeConfig::load(&path) {
            Ok(c) => c.quotas,
            Err(e) => {
                tracing::error!("SIGHUP: {e:#}; per-SAE limits unchanged");
                continue;
            }
        };
        let summary = format!(
            "default={} saes={} pairs={} api_overrides={}",
            file.default.is_some(),
            file.sae.len(),
            file.pair.values().map(|m| m.len()).sum::<usize>(),
            {
                let o = ops.limit_overrides();
                o.sae.len() + o.pair.values().map(|m| m.len()).sum::<usize>()
            }
        );
        if let Err(e) = file.with_overrides(&ops.limit_overrides()).validate() {
            tracing::error!("SIGHUP: {e}; per-SAE limits unchanged");
            continue;
        }
        let quotas = ops.set_file_quotas(file);
        match driver.set_quotas(quotas).await {
            Some(Ok(())) => {
                tracing::info!(%summary, "SIGHUP: per-SAE key rate limits reloaded");
                let _ = trail.record(Event::node("quotas.reload", "sighup", &summary));
            }
            Some(Err(e)) => tracing::error!("SIGHUP: {e}; per-SAE limits unchanged"),
            None => tracing::error!("SIGHUP: key manager not answering; limits unchanged"),
        }
    }
}
