//! End-to-end key pools: key this node relayed to each destination (out) and key each origin
//! relayed to this node (in), held in chunks named by relay sequence number.
//!
//! Out-pools are spent from the front, oldest chunk first; in-pools by the spans the origin names
//! in its assignments. Chunks cut by a request are written once per batch (`flush_touched`).

use std::collections::{BTreeMap, BTreeSet};

use kagi_keymat::Key;

use crate::keybuf::{take_sequential, KeyBuf, KeyBufParts};
use crate::msgs::{NodeId, Span};
use crate::record::{Pool, Record, RelayRoute};

/// Per-node maps of the pools: looked up on every request, assignment and refill, and iterated
/// only to sum or to list (sorted), so hashed.
type PerNode<V> = crate::fixed_hash::FixedMap<NodeId, V>;

/// Both directions of end-to-end key of this node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pools {
    out: PerNode<BTreeMap<u64, KeyBuf>>,
    /// Unspent bytes of each out-pool (kept in step with `out`; pools hold thousands of chunks
    /// and this is read on every request and refill tick).
    out_free: PerNode<u64>,
    /// Bumped by every change that may move out-pool byte counts (see `crate::quiet`).
    version: u64,
    inp: PerNode<BTreeMap<u64, KeyBuf>>,
    /// The paths each out-pool chunk was relayed over, where known (chunks stored before paths
    /// were recorded, or relayed by a run that lost them, have none: "paths unknown").
    out_routes: PerNode<BTreeMap<u64, RelayRoute>>,
    /// Chunks cut since the last [`flush_touched`](Self::flush_touched).
    touched: BTreeSet<(Pool, u64)>,
    /// Out-pools whose bytes changed since refill last looked (see `crate::quiet`).
    refill_touched: crate::quiet::Touched,
}

impl Pools {
    /// Restores a chunk from the store; call [`recount`](Self::recount) after the last one.
    pub(crate) fn restore_chunk(&mut self, pool: Pool, chunk: u64, buf: KeyBuf) {
        self.version += 1;
        self.refill_touched.all();
        let m = match pool {
            Pool::Out(d) => self.out.entry(d).or_default(),
            Pool::In(o) => self.inp.entry(o).or_default(),
        };
        m.insert(chunk, buf);
    }

    /// Restores the paths of an out-pool chunk.
    pub(crate) fn restore_route(&mut self, pool: &Pool, chunk: u64, route: RelayRoute) {
        self.version += 1;
        self.refill_touched.all();
        if let Pool::Out(d) = pool {
            self.out_routes
                .entry(d.clone())
                .or_default()
                .insert(chunk, route);
        }
    }

    /// The paths out-pool chunk `chunk` for `dest` was relayed over, if known.
    pub(crate) fn route_of(&self, dest: &NodeId, chunk: u64) -> Option<&RelayRoute> {
        self.out_routes.get(dest)?.get(&chunk)
    }

    /// Unspent bytes for `dest` in chunks whose known paths pass `admit`.
    pub(crate) fn out_free_where(&self, dest: &NodeId, admit: impl Fn(&RelayRoute) -> bool) -> u64 {
        let (Some(pool), Some(routes)) = (self.out.get(dest), self.out_routes.get(dest)) else {
            return 0;
        };
        pool.iter()
            .filter(|(c, _)| routes.get(c).is_some_and(&admit))
            .map(|(_, b)| u64::from(b.tail_free()))
            .sum()
    }

    /// Takes `n` bytes for `dest` from chunks whose known paths pass `admit`, oldest first;
    /// `None` (nothing taken) when they hold too little.
    pub(crate) fn take_out_where(
        &mut self,
        dest: &NodeId,
        n: usize,
        admit: impl Fn(&RelayRoute) -> bool,
    ) -> Option<(Vec<Span>, Key)> {
        self.version += 1;
        self.refill_touched.dest(dest);
        if (self.out_free_where(dest, &admit) as usize) < n {
            return None;
        }
        let routes = self.out_routes.get(dest)?;
        let pool = self.out.get_mut(dest)?;
        let mut spans = Vec::new();
        let mut out = Key::zeroed(0);
        let mut need = n as u32;
        for (&id, buf) in pool.iter_mut() {
            if need == 0 {
                break;
            }
            if !routes.get(&id).is_some_and(&admit) {
                continue;
            }
            let take = buf.tail_free().min(need);
            if take == 0 {
                continue;
            }
            let start = buf.tail();
            out.extend_from(&buf.take(start, take).ok()?);
            spans.push(Span {
                id,
                start,
                len: take,
            });
            need -= take;
        }
        for s in &spans {
            self.touched.insert((Pool::Out(dest.clone()), s.id));
        }
        if let Some(f) = self.out_free.get_mut(dest) {
            *f -= n as u64;
        }
        Some((spans, out))
    }

    /// Recomputes the out-pool byte counts after a restore.
    pub(crate) fn recount(&mut self) {
        self.version += 1;
        self.refill_touched.all();
        self.out_free = self
            .out
            .iter()
            .map(|(d, p)| {
                (
                    d.clone(),
                    p.values().map(|b| u64::from(b.tail_free())).sum(),
                )
            })
            .collect();
    }

    /// Changes whenever out-pool byte counts may have changed.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The out-pools whose bytes changed since the last call (`None`: possibly all).
    pub(crate) fn take_refill_touched(&mut self) -> Option<BTreeSet<NodeId>> {
        self.refill_touched.take()
    }

    /// Bytes of end-to-end key ready for masters here with slaves at `dest`.
    pub(crate) fn out_free(&self, dest: &NodeId) -> u64 {
        self.out_free.get(dest).copied().unwrap_or(0)
    }

    /// Unspent bytes over every out-pool.
    pub(crate) fn total_out(&self) -> u64 {
        self.out
            .values()
            .flat_map(|p| p.values())
            .map(|b| u64::from(b.free()))
            .sum()
    }

    /// Unspent bytes relayed here by `origin`.
    pub(crate) fn in_bytes(&self, origin: &NodeId) -> u64 {
        self.inp
            .get(origin)
            .map(|p| p.values().map(|b| u64::from(b.free())).sum())
            .unwrap_or(0)
    }

    /// True when the in-pool from `origin` holds chunk `seq` (a relay already received).
    pub(crate) fn has_in(&self, origin: &NodeId, seq: u64) -> bool {
        self.inp.get(origin).is_some_and(|p| p.contains_key(&seq))
    }

    /// Adds a relayed key to the out-pool for `dest`, with the paths it travelled over when
    /// known; returns its record.
    pub(crate) fn add_out(
        &mut self,
        dest: &NodeId,
        seq: u64,
        key: Key,
        route: Option<RelayRoute>,
    ) -> Record {
        self.version += 1;
        self.refill_touched.dest(dest);
        let buf = KeyBuf::new(key);
        let pool = Pool::Out(dest.clone());
        let parts = KeyBufParts::from(&buf);
        let rec = match route {
            Some(route) => {
                self.out_routes
                    .entry(dest.clone())
                    .or_default()
                    .insert(seq, route.clone());
                Record::RoutedChunk {
                    pool,
                    chunk: seq,
                    buf: parts,
                    route,
                }
            }
            None => Record::Chunk {
                pool,
                chunk: seq,
                buf: parts,
            },
        };
        *self.out_free.entry(dest.clone()).or_default() += u64::from(buf.tail_free());
        self.out.entry(dest.clone()).or_default().insert(seq, buf);
        rec
    }

    /// Adds a key relayed by `origin` to the in-pool; returns its record.
    pub(crate) fn add_in(&mut self, origin: &NodeId, seq: u64, key: Key) -> Record {
        let buf = KeyBuf::new(key);
        let rec = Record::Chunk {
            pool: Pool::In(origin.clone()),
            chunk: seq,
            buf: KeyBufParts::from(&buf),
        };
        self.inp.entry(origin.clone()).or_default().insert(seq, buf);
        rec
    }

    /// Takes `n` bytes from the out-pool for `dest`, oldest chunks first.
    pub(crate) fn take_out(&mut self, dest: &NodeId, n: usize) -> Option<(Vec<Span>, Key)> {
        self.version += 1;
        self.refill_touched.dest(dest);
        if (self.out_free(dest) as usize) < n {
            return None;
        }
        let pool = self.out.get_mut(dest)?;
        let (spans, out) = take_sequential(pool, n as u32);
        for s in &spans {
            self.touched.insert((Pool::Out(dest.clone()), s.id));
        }
        if let Some(f) = self.out_free.get_mut(dest) {
            *f -= n as u64;
        }
        Some((spans, out))
    }

    /// The chunks named by `spans` that the in-pool from `origin` does not hold (at most
    /// [`crate::msgs::MAX_SPANS`], each once).
    pub(crate) fn in_missing<'a>(
        &self,
        origin: &NodeId,
        spans: impl Iterator<Item = &'a Span>,
    ) -> Vec<u64> {
        let pool = self.inp.get(origin);
        let missing: BTreeSet<u64> = spans
            .map(|s| s.id)
            .filter(|id| pool.is_none_or(|p| !p.contains_key(id)))
            .take(crate::msgs::MAX_SPANS)
            .collect();
        missing.into_iter().collect()
    }

    /// Drops chunks of the out-pool for `dest` that `dest` reported it lacks; returns the
    /// unspent bytes dropped.
    pub(crate) fn drop_missing_out(
        &mut self,
        dest: &NodeId,
        chunks: &[u64],
        batch: &mut Vec<Record>,
    ) -> u64 {
        self.version += 1;
        self.refill_touched.dest(dest);
        let Some(p) = self.out.get_mut(dest) else {
            return 0;
        };
        let mut bytes = 0;
        for c in chunks {
            if let Some(buf) = p.remove(c) {
                bytes += u64::from(buf.tail_free());
                batch.push(Record::ChunkGone {
                    pool: Pool::Out(dest.clone()),
                    chunk: *c,
                });
            }
        }
        if bytes > 0 || !batch.is_empty() {
            self.recount();
        }
        bytes
    }

    /// Takes spans from the in-pool relayed by `origin`; all or nothing.
    pub(crate) fn take_in(&mut self, origin: &NodeId, spans: &[Span]) -> Option<Key> {
        if !Span::disjoint(spans) {
            return None;
        }
        let pool = self.inp.get_mut(origin)?;
        for s in spans {
            pool.get(&s.id)?.can_take(s.start, s.len).ok()?;
        }
        let mut out = Key::zeroed(0);
        for s in spans {
            let buf = pool.get_mut(&s.id)?;
            out.extend_from(&buf.take(s.start, s.len).ok()?);
            self.touched.insert((Pool::In(origin.clone()), s.id));
        }
        Some(out)
    }

    /// Writes the final state of every pool chunk touched since the last call (one record per
    /// chunk, however many keys were cut from it), dropping exhausted chunks.
    pub(crate) fn flush_touched(&mut self, batch: &mut Vec<Record>) {
        for (pool, id) in std::mem::take(&mut self.touched) {
            let (map, routes) = match &pool {
                Pool::Out(d) => (self.out.get_mut(d), self.out_routes.get_mut(d)),
                Pool::In(o) => (self.inp.get_mut(o), None),
            };
            let Some(map) = map else { continue };
            match map.get(&id) {
                Some(buf)
                    if buf.exhausted() || matches!(pool, Pool::Out(_)) && buf.tail_free() == 0 =>
                {
                    map.remove(&id);
                    if let Some(r) = routes {
                        r.remove(&id);
                    }
                    batch.push(Record::ChunkGone { pool, chunk: id });
                }
                Some(buf) => {
                    let buf = KeyBufParts::from(buf);
                    batch.push(match routes.and_then(|r| r.get(&id)).cloned() {
                        Some(route) => Record::RoutedChunk {
                            pool,
                            chunk: id,
                            buf,
                            route,
                        },
                        None => Record::Chunk {
                            pool,
                            chunk: id,
                            buf,
                        },
                    });
                }
                None => batch.push(Record::ChunkGone { pool, chunk: id }),
            }
        }
    }

    /// Every out-pool chunk held now: `(dest, chunk)`.
    pub(crate) fn out_chunks(&self) -> Vec<(NodeId, u64)> {
        let mut chunks: Vec<(NodeId, u64)> = self
            .out
            .iter()
            .flat_map(|(d, p)| p.keys().map(move |c| (d.clone(), *c)))
            .collect();
        // In order of destination: the records that drop them are written in this order.
        chunks.sort_unstable();
        chunks
    }

    /// Drops these out-pool chunks (those still held).
    pub(crate) fn drop_out_chunks(&mut self, chunks: &[(NodeId, u64)], batch: &mut Vec<Record>) {
        self.version += 1;
        self.refill_touched.all();
        for (d, c) in chunks {
            if let Some(p) = self.out.get_mut(d) {
                if p.remove(c).is_some() {
                    if let Some(r) = self.out_routes.get_mut(d) {
                        r.remove(c);
                    }
                    batch.push(Record::ChunkGone {
                        pool: Pool::Out(d.clone()),
                        chunk: *c,
                    });
                }
            }
        }
        self.recount();
    }

    /// Drops both pools shared with `peer` (it lost its copies).
    pub(crate) fn drop_pools_with(&mut self, peer: &NodeId, batch: &mut Vec<Record>) {
        self.version += 1;
        self.refill_touched.dest(peer);
        self.out_routes.remove(peer);
        for (pool, map) in [
            (Pool::Out(peer.clone()), self.out.remove(peer)),
            (Pool::In(peer.clone()), self.inp.remove(peer)),
        ] {
            for chunk in map.into_iter().flat_map(|m| m.into_keys()) {
                batch.push(Record::ChunkGone {
                    pool: pool.clone(),
                    chunk,
                });
            }
        }
        self.touched.retain(|(p, _)| match p {
            Pool::Out(n) | Pool::In(n) => n != peer,
        });
        self.recount();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_without_recorded_paths_serve_only_unconstrained_requests() {
        let route = RelayRoute {
            paths: vec![vec!["a".into(), "b".into(), "z".into()]],
            threshold: 1,
        };
        let mut p = Pools::default();
        // An old store's chunk (paths unknown) and a chunk relayed here now.
        p.restore_chunk(
            Pool::Out("z".into()),
            1,
            KeyBuf::new(Key::from_slice(&[1; 8])),
        );
        p.recount();
        let rec = p.add_out(
            &NodeId::from("z"),
            2,
            Key::from_slice(&[2; 8]),
            Some(route.clone()),
        );
        assert!(matches!(rec, Record::RoutedChunk { chunk: 2, .. }));
        assert_eq!(p.out_free(&NodeId::from("z")), 16);
        assert_eq!(p.out_free_where(&NodeId::from("z"), |_| true), 8);
        let (spans, k) = p
            .take_out_where(&NodeId::from("z"), 6, |r| r == &route)
            .unwrap();
        assert_eq!((spans[0].id, k.expose()), (2, &[2u8; 6][..]));
        assert!(
            p.take_out_where(&NodeId::from("z"), 3, |_| true).is_none(),
            "only 2 routed bytes are left"
        );
        assert_eq!(p.out_free(&NodeId::from("z")), 10);
        // Rewritten chunks keep their paths; the unknown one stays unknown.
        let (_, k) = p.take_out(&NodeId::from("z"), 5).unwrap();
        assert_eq!(k.expose(), &[1; 5]);
        let mut batch = Vec::new();
        p.flush_touched(&mut batch);
        assert!(batch
            .iter()
            .any(|r| matches!(r, Record::Chunk { chunk: 1, .. })));
        assert!(batch
            .iter()
            .any(|r| matches!(r, Record::RoutedChunk { chunk: 2, route: r2, .. } if *r2 == route)));
    }
}
