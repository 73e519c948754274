//! Finite-key length from *observed* counts for decoy-state BB84 with one signal and two decoy
//! intensities, after C. C. W. Lim, M. Curty, N. Walenta, F. Xu, H. Zbinden, "Concise security
//! bounds for practical decoy-state quantum key distribution", Phys. Rev. A 89, 022307 (2014).
//!
//! `kagi_quantum::FiniteDecoyBb84` evaluates the same bounds on *expected* counts of a channel
//! model (a rate model); here the inputs are the counts a block actually produced, which is what
//! post-processing must use. The key basis is called K (Lim's X) and the test basis T (Lim's Z).
//!
//! * Hoeffding-corrected counts (Eq. 2 context): n^±_{B,k} = e^{μ_k}/p_k (n_{B,k} ± δ(n_B)),
//!   δ(n) = √(n/2 · ln(21/ε_sec)).
//! * Vacuum events (Eq. 2): s_{B,0} ≥ τ_0 (μ2 n⁻_{μ3} − μ3 n⁺_{μ2}) / (μ2 − μ3).
//! * Single-photon events (Eq. 3): s_{B,1} ≥ τ_1 μ1 [n⁻_{μ2} − n⁺_{μ3} − (μ2² − μ3²)/μ1²
//!   (n⁺_{μ1} − s_{B,0}/τ_0)] / [μ1(μ2 − μ3) − μ2² + μ3²].
//! * Single-photon errors in T (Eq. 4): v_{T,1} ≤ τ_1 (m⁺_{μ2} − m⁻_{μ3}) / (μ2 − μ3).
//! * Phase error (Eq. 5): φ_K ≤ v_{T,1}/s_{T,1} + γ(ε_sec/21, v_{T,1}/s_{T,1}, s_{T,1}, s_{K,1}),
//!   γ of Eq. (6).
//! * Key length (Eq. 1): ℓ = ⌊s_{K,0} + s_{K,1}(1 − h(φ_K)) − λ_EC − 6 log2(21/ε_sec)
//!   − log2(2/ε_cor)⌋.
//!
//! τ_n = Σ_k p_k e^{−μ_k} μ_k^n / n!. Intensities must satisfy μ1 > μ2 + μ3 and μ2 > μ3 ≥ 0.

/// Intensities, their probabilities and security parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoySettings {
    /// μ1 (signal), μ2 (decoy), μ3 (vacuum or weak decoy), mean photons per pulse.
    pub mu: [f64; 3],
    /// Probabilities of the three intensities.
    pub p: [f64; 3],
    /// Secrecy parameter ε_sec.
    pub eps_sec: f64,
    /// Correctness parameter ε_cor.
    pub eps_cor: f64,
}

/// Observed counts of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockCounts {
    /// Sifted key-basis detections per intensity, n_{K,k}.
    pub n_key: [u64; 3],
    /// Sifted test-basis detections per intensity, n_{T,k}.
    pub n_test: [u64; 3],
    /// Test-basis errors per intensity, m_{T,k}.
    pub m_test: [u64; 3],
}

/// The bounds and the resulting key length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyLength {
    /// Lower bound on key-basis vacuum events s_{K,0}.
    pub s_k0: f64,
    /// Lower bound on key-basis single-photon events s_{K,1}.
    pub s_k1: f64,
    /// Upper bound on the single-photon phase-error rate φ_K.
    pub phi_k: f64,
    /// Secret key bits ℓ (0 when the formula is not positive).
    pub bits: u64,
    /// The formula's value before flooring at 0.
    pub raw: f64,
}

/// Problems with the settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FiniteKeyError {
    /// Intensities must satisfy μ1 > μ2 + μ3 and μ2 > μ3 ≥ 0.
    #[error("decoy intensities must satisfy mu1 > mu2 + mu3 and mu2 > mu3 >= 0, got {0:?}")]
    Intensities([f64; 3]),
    /// Probabilities must be in (0, 1] and sum to 1; ε parameters in (0, 1).
    #[error("bad probability or epsilon: {0}")]
    Probability(&'static str),
}

impl DecoySettings {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`FiniteKeyError`] describing the first problem.
    pub fn validate(&self) -> Result<(), FiniteKeyError> {
        let [m1, m2, m3] = self.mu;
        if !(m1 > m2 + m3 && m2 > m3 && m3 >= 0.0 && m1.is_finite()) {
            return Err(FiniteKeyError::Intensities(self.mu));
        }
        if self.p.iter().any(|&p| !(p > 0.0 && p <= 1.0))
            || (self.p.iter().sum::<f64>() - 1.0).abs() > 1e-9
        {
            return Err(FiniteKeyError::Probability(
                "intensity probabilities must be positive and sum to 1",
            ));
        }
        for (name, e) in [("eps_sec", self.eps_sec), ("eps_cor", self.eps_cor)] {
            if !(e > 0.0 && e < 1.0) {
                return Err(FiniteKeyError::Probability(name));
            }
        }
        Ok(())
    }

    /// τ_n for n ∈ {0, 1} (n! = 1).
    fn tau(&self, n: i32) -> f64 {
        (0..3)
            .map(|k| self.p[k] * (-self.mu[k]).exp() * self.mu[k].powi(n))
            .sum()
    }

    /// Hoeffding-corrected count for intensity `k`: e^{μ_k}/p_k (x ± δ(total)).
    fn corrected(&self, k: usize, x: f64, total: f64, sign: f64) -> f64 {
        let delta = (total / 2.0 * (21.0 / self.eps_sec).ln()).sqrt();
        self.mu[k].exp() / self.p[k] * (x + sign * delta)
    }

    /// (s_0, s_1) lower bounds for one basis from its per-intensity counts.
    fn vacuum_and_single(&self, n: [u64; 3]) -> (f64, f64) {
        let total: f64 = n.iter().map(|&x| x as f64).sum();
        let [m1, m2, m3] = self.mu;
        let np = |k: usize| self.corrected(k, n[k] as f64, total, 1.0);
        let nm = |k: usize| self.corrected(k, n[k] as f64, total, -1.0);
        let (t0, t1) = (self.tau(0), self.tau(1));
        let s0 = (t0 * (m2 * nm(2) - m3 * np(1)) / (m2 - m3)).max(0.0);
        let s1 = t1 * m1 * (nm(1) - np(2) - (m2 * m2 - m3 * m3) / (m1 * m1) * (np(0) - s0 / t0))
            / (m1 * (m2 - m3) - m2 * m2 + m3 * m3);
        // Both are counts of subsets of this basis's detections: never more than the total
        // (guards against settings that do not match the source).
        let s0 = s0.min(total);
        (s0, s1.clamp(0.0, total - s0))
    }

    /// Key length for the observed counts and `leaked_ec` bits disclosed by error correction
    /// (including any verification hash the caller wants counted).
    ///
    /// # Errors
    /// [`FiniteKeyError`] if the settings are invalid.
    pub fn key_length(&self, c: &BlockCounts, leaked_ec: u64) -> Result<KeyLength, FiniteKeyError> {
        self.validate()?;
        let (s_k0, s_k1) = self.vacuum_and_single(c.n_key);
        let (_, s_t1) = self.vacuum_and_single(c.n_test);
        let m_total: f64 = c.m_test.iter().map(|&x| x as f64).sum();
        let [_, m2, m3] = self.mu;
        let v_t1 = self.tau(1)
            * (self.corrected(1, c.m_test[1] as f64, m_total, 1.0)
                - self.corrected(2, c.m_test[2] as f64, m_total, -1.0))
            / (m2 - m3);
        let phi_k = if s_t1 <= 0.0 || s_k1 <= 0.0 {
            0.5
        } else {
            let b = (v_t1 / s_t1).clamp(0.0, 0.5);
            (b + gamma(self.eps_sec / 21.0, b, s_t1, s_k1)).min(0.5)
        };
        let raw = s_k0 + s_k1 * (1.0 - h2(phi_k))
            - leaked_ec as f64
            - 6.0 * (21.0 / self.eps_sec).log2()
            - (2.0 / self.eps_cor).log2();
        let bits = if raw.is_finite() && raw > 0.0 {
            raw.floor() as u64
        } else {
            0
        };
        Ok(KeyLength {
            s_k0,
            s_k1,
            phi_k,
            bits,
            raw,
        })
    }
}

/// γ(a, b, c, d) of Lim et al. 2014, Eq. (6).
pub fn gamma(a: f64, b: f64, c: f64, d: f64) -> f64 {
    if b <= 0.0 || b >= 1.0 || c <= 0.0 || d <= 0.0 {
        return 0.5;
    }
    let arg = (c + d) / (c * d * (1.0 - b) * b) * (21.0 * 21.0) / (a * a);
    ((c + d) * (1.0 - b) * b / (c * d * std::f64::consts::LN_2) * arg.log2())
        .max(0.0)
        .sqrt()
}

/// Binary entropy in bits.
pub fn h2(x: f64) -> f64 {
    crate::cascade::h2(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DecoySettings {
        DecoySettings {
            mu: [0.5, 0.1, 0.0],
            p: [0.8, 0.1, 0.1],
            eps_sec: 1e-10,
            eps_cor: 1e-15,
        }
    }

    /// Counts an honest channel would give: gain Y0 + 1 − e^{−ημ}, error e_d, for `pulses`.
    fn honest(pulses: f64, eta: f64, e_d: f64, p_key: f64) -> BlockCounts {
        let s = settings();
        let mut c = BlockCounts::default();
        for k in 0..3 {
            let gain = 1e-6 + 1.0 - (-eta * s.mu[k]).exp();
            let err = (0.5 * 1e-6 + e_d * (1.0 - (-eta * s.mu[k]).exp())) / gain;
            let det = pulses * s.p[k] * gain;
            c.n_key[k] = (det * p_key * p_key) as u64;
            c.n_test[k] = (det * (1.0 - p_key) * (1.0 - p_key)) as u64;
            c.m_test[k] = (c.n_test[k] as f64 * err) as u64;
        }
        c
    }

    #[test]
    fn key_length_is_eq_1_of_the_counts() {
        let s = settings();
        let c = honest(1e9, 0.01, 0.02, 0.5);
        let n_k: u64 = c.n_key.iter().sum();
        let leak = (1.1 * n_k as f64 * h2(0.02)) as u64;
        let k = s.key_length(&c, leak).unwrap();
        // Recompute Eq. (1) from the returned bounds.
        let want = k.s_k0 + k.s_k1 * (1.0 - h2(k.phi_k))
            - leak as f64
            - 6.0 * (21e10f64).log2()
            - (2e15f64).log2();
        assert!((k.raw - want).abs() < 1e-6 * want.abs().max(1.0));
        assert_eq!(k.bits, want.floor() as u64);
        // Sanity: single photons are a large part of the key-basis detections, φ a few %.
        assert!(k.s_k1 > 0.3 * n_k as f64 && k.s_k1 < n_k as f64, "{k:?}");
        // φ_K: above the true single-photon error (~e_d) because of the finite-size terms.
        assert!(k.phi_k > 0.02 && k.phi_k < 0.2, "{k:?}");
        assert!(k.bits > 0);
    }

    #[test]
    fn high_error_rates_give_no_key() {
        let s = settings();
        let c = honest(1e9, 0.01, 0.15, 0.5);
        let n_k: u64 = c.n_key.iter().sum();
        let k = s
            .key_length(&c, (1.1 * n_k as f64 * h2(0.15)) as u64)
            .unwrap();
        assert_eq!(k.bits, 0);
    }

    #[test]
    fn more_pulses_more_key_per_pulse() {
        let s = settings();
        let rate = |pulses: f64| {
            let c = honest(pulses, 0.01, 0.02, 0.5);
            let n_k: u64 = c.n_key.iter().sum();
            s.key_length(&c, (1.1 * n_k as f64 * h2(0.02)) as u64)
                .unwrap()
                .bits as f64
                / pulses
        };
        assert!(rate(1e10) > rate(1e9));
        assert!(rate(1e9) > rate(2e8));
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut s = settings();
        s.mu = [0.1, 0.2, 0.0];
        assert!(s.key_length(&BlockCounts::default(), 0).is_err());
        let mut s = settings();
        s.p = [0.5, 0.1, 0.1];
        assert!(s.validate().is_err());
    }
}
