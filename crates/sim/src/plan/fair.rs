//! Weighted max-min fair sharing of key resources (progressive filling): every demand's rate
//! per unit of weight rises together until a resource runs out or the demand is met; demands
//! through an exhausted resource freeze, the rest keep rising.

/// The demands, flat: demand `i` draws one bit from each resource in
/// `uses[offsets[i]..offsets[i + 1]]` per delivered bit (scale capacities for overheads).
#[derive(Debug, Clone, Default)]
pub struct Demands {
    /// Start of each demand's resources in `uses`; one more entry than demands.
    pub offsets: Vec<u32>,
    /// Resources, demand after demand.
    pub uses: Vec<u32>,
    /// Weight of each demand (e.g. the number of SAE pairs behind it).
    pub weight: Vec<f64>,
}

impl Demands {
    /// Adds a demand.
    pub fn push(&mut self, uses: impl IntoIterator<Item = u32>, weight: f64) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.uses.extend(uses);
        self.offsets.push(self.uses.len() as u32);
        self.weight.push(weight);
    }

    /// Number of demands.
    pub fn len(&self) -> usize {
        self.weight.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.weight.is_empty()
    }

    /// The resources of demand `i`.
    pub fn uses(&self, i: usize) -> &[u32] {
        &self.uses[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// The fair allocation.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// Rate per unit of weight of each demand, bit/s.
    pub level: Vec<f64>,
    /// Key drawn from each resource, bit/s.
    pub used: Vec<f64>,
    /// The resource that stopped each demand (`None`: the cap, or no resources).
    pub bottleneck: Vec<Option<u32>>,
}

/// Allocates `capacity` (bit/s per resource) among `demands`, each wanting at most `cap` bit/s
/// per unit of weight (`f64::INFINITY`: as much as the network gives).
pub fn allocate(capacity: &[f64], demands: &Demands, cap: f64) -> Allocation {
    let r_n = capacity.len();
    let d_n = demands.len();
    // Resource → demands through it (CSR).
    let mut start = vec![0u32; r_n + 1];
    for &r in &demands.uses {
        start[r as usize + 1] += 1;
    }
    for r in 0..r_n {
        start[r + 1] += start[r];
    }
    let mut fill = start.clone();
    let mut through = vec![0u32; demands.uses.len()];
    for i in 0..d_n {
        for &r in demands.uses(i) {
            through[fill[r as usize] as usize] = i as u32;
            fill[r as usize] += 1;
        }
    }
    let mut slope = vec![0.0f64; r_n]; // bit/s drawn per unit rise of the level
    let mut active = vec![true; d_n];
    let mut level = vec![0.0f64; d_n];
    let mut bottleneck = vec![None; d_n];
    let mut left = 0usize;
    for (i, a) in active.iter_mut().enumerate() {
        if demands.uses(i).is_empty() || demands.weight[i] <= 0.0 {
            *a = false;
        } else {
            left += 1;
            for &r in demands.uses(i) {
                slope[r as usize] += demands.weight[i];
            }
        }
    }
    let mut used = vec![0.0f64; r_n];
    let mut done = vec![false; r_n];
    let mut lambda = 0.0f64;
    while left > 0 {
        // The next event: a resource running out, or the cap.
        let mut step = (cap - lambda).max(0.0);
        for r in 0..r_n {
            if !done[r] && slope[r] > 1e-12 {
                step = step.min((capacity[r] - used[r]).max(0.0) / slope[r]);
            }
        }
        if !step.is_finite() {
            break;
        }
        lambda += step;
        for r in 0..r_n {
            if !done[r] {
                used[r] += slope[r] * step;
            }
        }
        if lambda >= cap {
            break;
        }
        // Exhausted resources freeze the demands through them.
        for r in 0..r_n {
            if !done[r] && slope[r] > 1e-12 && used[r] >= capacity[r] * (1.0 - 1e-9) - 1e-12 {
                done[r] = true;
                for &i in &through[start[r] as usize..start[r + 1] as usize] {
                    let i = i as usize;
                    if active[i] {
                        active[i] = false;
                        left -= 1;
                        level[i] = lambda;
                        bottleneck[i] = Some(r as u32);
                        for &q in demands.uses(i) {
                            slope[q as usize] -= demands.weight[i];
                        }
                    }
                }
            }
        }
    }
    for (i, a) in active.iter().enumerate() {
        if *a {
            level[i] = lambda.min(cap);
        }
    }
    Allocation {
        level,
        used,
        bottleneck,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demands(list: &[(&[u32], f64)]) -> Demands {
        let mut d = Demands::default();
        for (uses, w) in list {
            d.push(uses.iter().copied(), *w);
        }
        d
    }

    #[test]
    fn classic_max_min_example() {
        // Two resources of 10; A uses both, B the first, C the second.
        let d = demands(&[(&[0, 1], 1.0), (&[0], 1.0), (&[1], 1.0)]);
        let a = allocate(&[10.0, 10.0], &d, f64::INFINITY);
        for l in &a.level {
            assert!((l - 5.0).abs() < 1e-9, "{:?}", a.level);
        }
    }

    #[test]
    fn a_frozen_demand_leaves_the_rest_to_others() {
        // A is stopped by resource 0 (cap 2, shared with B); C alone on resource 1 gets all 10.
        let d = demands(&[(&[0, 1], 1.0), (&[0], 1.0), (&[1], 1.0)]);
        let a = allocate(&[2.0, 10.0], &d, f64::INFINITY);
        assert!((a.level[0] - 1.0).abs() < 1e-9);
        assert!((a.level[1] - 1.0).abs() < 1e-9);
        assert!((a.level[2] - 9.0).abs() < 1e-9, "{:?}", a.level);
        assert_eq!(a.bottleneck[2], Some(1));
    }

    #[test]
    fn weights_scale_shares_and_bottlenecks_are_named() {
        // Resource 0 (cap 9) shared by weights 1 and 2: per-weight level 3; the heavier demand
        // also crosses resource 1 (cap 100), which is not its bottleneck.
        let d = demands(&[(&[0], 1.0), (&[0, 1], 2.0)]);
        let a = allocate(&[9.0, 100.0], &d, f64::INFINITY);
        assert!((a.level[0] - 3.0).abs() < 1e-9);
        assert!((a.level[1] - 3.0).abs() < 1e-9);
        assert_eq!(a.bottleneck[1], Some(0));
        assert!((a.used[1] - 6.0).abs() < 1e-9);
    }

    #[test]
    fn the_cap_stops_everyone_below_capacity() {
        let d = demands(&[(&[0], 1.0), (&[0], 1.0)]);
        let a = allocate(&[10.0], &d, 2.0);
        assert_eq!(a.level, vec![2.0, 2.0]);
        assert!((a.used[0] - 4.0).abs() < 1e-9);
    }

    #[test]
    fn an_empty_resource_freezes_at_zero_and_others_continue() {
        let d = demands(&[(&[0, 1], 1.0), (&[1], 1.0)]);
        let a = allocate(&[0.0, 4.0], &d, f64::INFINITY);
        assert_eq!(a.level[0], 0.0);
        assert!((a.level[1] - 4.0).abs() < 1e-9);
    }
}
