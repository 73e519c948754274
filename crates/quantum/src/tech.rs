//! Link technologies as a network names them: a protocol name and its parameters, with the
//! same names as the `kagi link-rate` flags (`mu`, `eta-bob`, `n-x`, …), turned into a
//! validated model and a key supply over time.
//!
//! * `bb84-decoy`, `cv-gg02`, `tf-sns`, `repeater`: a constant secret key rate.
//! * `bb84-finite`: whole post-processing blocks of ℓ bits, each appearing when the n_X
//!   detections of its block have accumulated.
//! * `satellite`: key only during pass windows of a circular orbit over the ground station(s),
//!   with a seeded daily weather state per station that cancels its passes (see
//!   [`crate::supply::PassSchedule`]).
//!
//! Every error names the parameter (`field`) it is about, so a topology loader can say which
//! link and which field is wrong.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::orbit::{Orbit, Station};
use crate::repeater::{HeraldScheme, RepeaterParams, RepeaterSegment, SegmentPoint};
use crate::satellite::{SatelliteLink, SatelliteParams};
use crate::supply::{KeySupply, PassSchedule, SatelliteSetup};
use crate::{
    binary_entropy, CvGg02, CvGg02Params, DecoyBb84, DecoyBb84Params, DecoyMethod, Detection,
    FiniteDecoyBb84, FiniteDecoyBb84Params, LinkModel, ModelError, TfSns, TfSnsParams,
};

/// Protocols a network link may name.
pub const LINK_PROTOCOLS: [&str; 6] = [
    "bb84-decoy",
    "bb84-finite",
    "cv-gg02",
    "tf-sns",
    "satellite",
    "repeater",
];

/// A parameter value as written in a topology.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A number.
    Num(f64),
    /// A switch.
    Flag(bool),
    /// A word, e.g. `detection = "heterodyne"`.
    Text(String),
}

/// What is wrong with a link technology, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TechError {
    /// The field: `protocol` or `params.<name>`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl TechError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validated link technology.
#[derive(Debug, Clone)]
pub enum LinkTech {
    /// A fibre model with a constant rate (`bb84-decoy`, `cv-gg02`, `tf-sns`).
    Fibre(Arc<dyn LinkModel>),
    /// Finite-key decoy BB84: key in whole blocks.
    Finite(FiniteDecoyBb84),
    /// Satellite downlink(s) in pass windows.
    Satellite(Box<SatelliteSetup>),
    /// Memory-based repeater segment.
    Repeater(RepeaterTech),
}

/// A repeater segment used for key: BBM92 on the heralded pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct RepeaterTech {
    /// The segment model.
    pub segment: RepeaterSegment,
    /// Error-correction inefficiency f.
    pub f: f64,
    /// Sifting factor q (1/2 for random bases).
    pub q: f64,
}

/// Key from a repeater segment at one length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepeaterKey {
    /// The segment's entanglement performance.
    pub segment: SegmentPoint,
    /// Quantum bit error rate of the pairs: a Werner state of fidelity F gives
    /// Q = 2(1 − F)/3 in either basis.
    pub qber: f64,
    /// Secret key rate, bit/s: events × q × (1 − h(Q) − f h(Q)).
    pub key_bps: f64,
}

impl RepeaterTech {
    /// Key rate and QBER at `length_km` (0 for an invalid length).
    pub fn key(&self, length_km: f64) -> Option<RepeaterKey> {
        let s = self.segment.evaluate(length_km).ok()?;
        let qber = (2.0 * (1.0 - s.fidelity) / 3.0).clamp(0.0, 0.5);
        let frac = 1.0 - binary_entropy(qber) - self.f * binary_entropy(qber);
        Some(RepeaterKey {
            segment: s,
            qber,
            key_bps: (s.events_per_s * self.q * frac).max(0.0),
        })
    }
}

/// Reads named parameters, remembering which were used so that leftovers are reported.
struct Params<'a> {
    map: BTreeMap<String, &'a ParamValue>,
    protocol: &'a str,
}

impl<'a> Params<'a> {
    fn new(protocol: &'a str, raw: &'a BTreeMap<String, ParamValue>) -> Result<Self, TechError> {
        let mut map = BTreeMap::new();
        for (k, v) in raw {
            let norm = k.replace('_', "-");
            if map.insert(norm.clone(), v).is_some() {
                return Err(TechError::new(
                    format!("params.{norm}"),
                    "given twice (with '-' and '_')",
                ));
            }
        }
        Ok(Self { map, protocol })
    }

    fn num(&mut self, name: &str) -> Result<Option<f64>, TechError> {
        match self.map.remove(name) {
            None => Ok(None),
            Some(ParamValue::Num(v)) if v.is_finite() => Ok(Some(*v)),
            Some(ParamValue::Num(v)) => Err(TechError::new(
                format!("params.{name}"),
                format!("must be a finite number, got {v}"),
            )),
            Some(other) => Err(TechError::new(
                format!("params.{name}"),
                format!("must be a number, got {other:?}"),
            )),
        }
    }

    fn set(&mut self, name: &str, dst: &mut f64) -> Result<(), TechError> {
        if let Some(v) = self.num(name)? {
            *dst = v;
        }
        Ok(())
    }

    fn text(&mut self, name: &str) -> Result<Option<String>, TechError> {
        match self.map.remove(name) {
            None => Ok(None),
            Some(ParamValue::Text(s)) => Ok(Some(s.clone())),
            Some(other) => Err(TechError::new(
                format!("params.{name}"),
                format!("must be a word, got {other:?}"),
            )),
        }
    }

    fn finish(self) -> Result<(), TechError> {
        if let Some(k) = self.map.keys().next() {
            return Err(TechError::new(
                format!("params.{k}"),
                format!(
                    "unknown parameter for protocol {:?} (known: {})",
                    self.protocol,
                    known_params(self.protocol).join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// Parameter names each protocol accepts.
pub fn known_params(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "bb84-decoy" => &[
            "alpha",
            "eta-bob",
            "y0",
            "e-d",
            "f",
            "q",
            "mu",
            "nu",
            "p-ap",
            "dead-time",
            "rep-rate",
        ],
        "bb84-finite" => &[
            "alpha", "eta-bob", "p-dc", "p-ap", "e-d", "f", "mu", "nu", "mu3", "p-mu1", "p-mu2",
            "p-x", "n-x", "eps-sec", "eps-cor", "kappa", "rep-rate",
        ],
        "cv-gg02" => &[
            "alpha",
            "va",
            "xi",
            "eta-det",
            "v-el",
            "beta",
            "detection",
            "rep-rate",
        ],
        "tf-sns" => &["alpha", "eta-d", "p-d", "e-d", "f", "mu", "eps", "rep-rate"],
        "satellite" => &[
            "altitude",
            "inclination",
            "raan",
            "phase",
            "min-elevation",
            "divergence",
            "rx-aperture",
            "tx-aperture",
            "zenith-transmittance",
            "fixed-loss",
            "eta-bob",
            "y0",
            "e-d",
            "f",
            "q",
            "mu",
            "nu",
            "rep-rate",
            "lat-a",
            "lon-a",
            "cloud-a",
            "lat-b",
            "lon-b",
            "cloud-b",
            "hold-hours",
            "clock-speedup",
        ],
        "repeater" => &[
            "alpha",
            "eta-emit",
            "eta-det",
            "max-attempt-rate",
            "modes",
            "coherence-time",
            "scheme",
            "alpha-b",
            "f",
            "q",
        ],
        _ => &[],
    }
}

/// Maps a model's error (literature name) to the topology field.
fn model_err(e: ModelError) -> TechError {
    let name = match &e {
        ModelError::NotFinite { name, .. }
        | ModelError::Negative { name, .. }
        | ModelError::NotPositive { name, .. }
        | ModelError::NotProbability { name, .. }
        | ModelError::OutOfRange { name, .. } => (*name).to_string(),
        ModelError::IntensityOrder { .. } => "mu".to_string(),
    };
    let field = match name.as_str() {
        "e_mis" => "e-d".to_string(),
        "p1" => "p-mu1".to_string(),
        "p2" | "p3" => "p-mu2".to_string(),
        "v_a" => "va".to_string(),
        other => other.replace('_', "-"),
    };
    TechError::new(format!("params.{field}"), e.to_string())
}

impl LinkTech {
    /// Builds the technology of `protocol` from its named parameters.
    ///
    /// # Errors
    /// [`TechError`] naming `protocol` for an unknown protocol, or `params.<name>` for an
    /// unknown parameter, a value of the wrong kind, or one out of range.
    pub fn from_params(
        protocol: &str,
        params: &BTreeMap<String, ParamValue>,
    ) -> Result<Self, TechError> {
        if !LINK_PROTOCOLS.contains(&protocol) {
            return Err(TechError::new(
                "protocol",
                format!(
                    "unknown protocol {protocol:?} (expected one of {})",
                    LINK_PROTOCOLS.join(", ")
                ),
            ));
        }
        let mut p = Params::new(protocol, params)?;
        let tech = match protocol {
            "bb84-decoy" => {
                let d = decoy_params(&mut p, DecoyBb84Params::default())?;
                LinkTech::Fibre(Arc::new(
                    DecoyBb84::new(d, DecoyMethod::VacuumWeak).map_err(model_err)?,
                ))
            }
            "bb84-finite" => LinkTech::Finite(finite(&mut p)?),
            "cv-gg02" => {
                let mut c = CvGg02Params::default();
                p.set("alpha", &mut c.alpha_db_per_km)?;
                p.set("va", &mut c.v_a)?;
                p.set("xi", &mut c.xi)?;
                p.set("eta-det", &mut c.eta_det)?;
                p.set("v-el", &mut c.v_el)?;
                p.set("beta", &mut c.beta)?;
                p.set("rep-rate", &mut c.rep_rate_hz)?;
                match p.text("detection")?.as_deref() {
                    None | Some("homodyne") => {}
                    Some("heterodyne") => c.detection = Detection::Heterodyne,
                    Some(o) => {
                        return Err(TechError::new(
                            "params.detection",
                            format!("{o:?} (expected \"homodyne\" or \"heterodyne\")"),
                        ))
                    }
                }
                LinkTech::Fibre(Arc::new(CvGg02::new(c).map_err(model_err)?))
            }
            "tf-sns" => {
                let mut t = TfSnsParams::default();
                p.set("alpha", &mut t.alpha_db_per_km)?;
                p.set("eta-d", &mut t.eta_d)?;
                p.set("p-d", &mut t.p_d)?;
                p.set("e-d", &mut t.e_d)?;
                p.set("f", &mut t.f)?;
                p.set("rep-rate", &mut t.rep_rate_hz)?;
                let mu = p.num("mu")?;
                let eps = p.num("eps")?;
                if mu.is_some() || eps.is_some() {
                    t.optimize = false;
                }
                t.mu = mu.unwrap_or(t.mu);
                t.eps = eps.unwrap_or(t.eps);
                LinkTech::Fibre(Arc::new(TfSns::new(t).map_err(model_err)?))
            }
            "satellite" => LinkTech::Satellite(Box::new(satellite(&mut p)?)),
            "repeater" => LinkTech::Repeater(repeater(&mut p)?),
            _ => unreachable!("checked against LINK_PROTOCOLS above"),
        };
        p.finish()?;
        Ok(tech)
    }

    /// The protocol name.
    pub fn name(&self) -> &'static str {
        match self {
            LinkTech::Fibre(m) => m.name(),
            LinkTech::Finite(_) => "bb84-finite",
            LinkTech::Satellite(_) => "satellite",
            LinkTech::Repeater(_) => "repeater",
        }
    }

    /// How key appears over time on a link of `length_km` (ignored by satellites), with the
    /// network's demo speed-up `multiplier` applied to the rate; `seed` and `epoch_unix` fix
    /// the weather and the orbit's reference time.
    pub fn supply(&self, length_km: f64, multiplier: f64, seed: u64, epoch_unix: f64) -> KeySupply {
        let m = multiplier.max(0.0);
        match self {
            LinkTech::Fibre(model) => KeySupply::Constant {
                bps: model.secret_key_rate_bps(length_km) * m,
            },
            LinkTech::Repeater(r) => KeySupply::Constant {
                bps: r.key(length_km).map_or(0.0, |k| k.key_bps) * m,
            },
            LinkTech::Finite(f) => {
                let (bits, period) = finite_block(f, length_km);
                if bits <= 0.0 || m <= 0.0 {
                    KeySupply::Constant { bps: 0.0 }
                } else {
                    KeySupply::Blocks {
                        bits,
                        period_s: period / m,
                    }
                }
            }
            LinkTech::Satellite(s) => KeySupply::Passes(Box::new(PassSchedule::new(
                (**s).clone(),
                m,
                seed,
                epoch_unix,
            ))),
        }
    }

    /// Long-run mean secret key rate, bit/s, for planning (satellites: expected key per day
    /// over a day of passes with the stations' cloud probabilities, ÷ 86,400).
    pub fn mean_rate_bps(&self, length_km: f64) -> f64 {
        match self {
            LinkTech::Fibre(model) => model.secret_key_rate_bps(length_km),
            LinkTech::Repeater(r) => r.key(length_km).map_or(0.0, |k| k.key_bps),
            LinkTech::Finite(f) => {
                let (bits, period) = finite_block(f, length_km);
                if period > 0.0 {
                    bits / period
                } else {
                    0.0
                }
            }
            LinkTech::Satellite(s) => s.mean_rate_bps(),
        }
    }
}

/// Key bits per finite-key block and the time one block takes, at `length_km`.
pub fn finite_block(f: &FiniteDecoyBb84, length_km: f64) -> (f64, f64) {
    let Ok(pt) = f.evaluate(length_km) else {
        return (0.0, 0.0);
    };
    let get = |k: &str| {
        pt.intermediates
            .iter()
            .find(|(n, _)| *n == k)
            .map_or(0.0, |(_, v)| *v)
    };
    let bits = get("key_bits_per_block").max(0.0);
    let t = get("block_time_s");
    if pt.rate_per_pulse <= 0.0 || !t.is_finite() {
        (0.0, 0.0)
    } else {
        (bits.floor(), t)
    }
}

fn decoy_params(p: &mut Params<'_>, mut d: DecoyBb84Params) -> Result<DecoyBb84Params, TechError> {
    p.set("alpha", &mut d.alpha_db_per_km)?;
    p.set("eta-bob", &mut d.eta_bob)?;
    p.set("y0", &mut d.y0)?;
    p.set("e-d", &mut d.e_d)?;
    p.set("f", &mut d.f)?;
    p.set("q", &mut d.q)?;
    p.set("mu", &mut d.mu)?;
    p.set("nu", &mut d.nu)?;
    if p.protocol == "bb84-decoy" {
        p.set("p-ap", &mut d.p_ap)?;
        p.set("dead-time", &mut d.dead_time_s)?;
    }
    p.set("rep-rate", &mut d.rep_rate_hz)?;
    d.validate().map_err(model_err)?;
    Ok(d)
}

/// Finite-key parameters from flags (shared with `kagi link-rate`'s names): giving any of
/// μ1, μ2, μ3, p_μ1, p_μ2 or p_X fixes them and turns the optimiser off.
fn finite(p: &mut Params<'_>) -> Result<FiniteDecoyBb84, TechError> {
    let mut f = FiniteDecoyBb84Params::default();
    p.set("alpha", &mut f.alpha_db_per_km)?;
    p.set("eta-bob", &mut f.eta_bob)?;
    p.set("p-dc", &mut f.p_dc)?;
    p.set("p-ap", &mut f.p_ap)?;
    p.set("e-d", &mut f.e_mis)?;
    p.set("f", &mut f.f)?;
    p.set("n-x", &mut f.n_x)?;
    p.set("eps-sec", &mut f.eps_sec)?;
    p.set("eps-cor", &mut f.eps_cor)?;
    p.set("rep-rate", &mut f.rep_rate_hz)?;
    if let Some(k) = p.num("kappa")? {
        f.kappa = Some(k);
    }
    let mut fixed = false;
    let [m1, m2, m3] = &mut f.mu;
    for (name, dst) in [("mu", m1), ("nu", m2), ("mu3", m3), ("p-x", &mut f.p_x)] {
        if let Some(v) = p.num(name)? {
            *dst = v;
            fixed = true;
        }
    }
    let p1 = p.num("p-mu1")?;
    let p2 = p.num("p-mu2")?;
    if p1.is_some() || p2.is_some() {
        fixed = true;
        f.p_mu[0] = p1.unwrap_or(f.p_mu[0]);
        f.p_mu[1] = p2.unwrap_or(f.p_mu[1]);
        f.p_mu[2] = 1.0 - f.p_mu[0] - f.p_mu[1];
    }
    if fixed {
        f.optimize = false;
    }
    FiniteDecoyBb84::new(f).map_err(model_err)
}

fn satellite(p: &mut Params<'_>) -> Result<SatelliteSetup, TechError> {
    let mut s = SatelliteParams::default();
    let mut orbit = Orbit::default();
    p.set("altitude", &mut orbit.altitude_km)?;
    p.set("inclination", &mut orbit.inclination_deg)?;
    p.set("raan", &mut orbit.raan_deg)?;
    p.set("phase", &mut orbit.phase_deg)?;
    orbit.validate().map_err(model_err)?;
    s.altitude_km = orbit.altitude_km;
    p.set("min-elevation", &mut s.min_elevation_deg)?;
    p.set("divergence", &mut s.divergence_urad)?;
    p.set("rx-aperture", &mut s.rx_aperture_m)?;
    p.set("tx-aperture", &mut s.tx_aperture_m)?;
    p.set("zenith-transmittance", &mut s.zenith_transmittance)?;
    p.set("fixed-loss", &mut s.fixed_loss_db)?;
    s.link = decoy_params(p, s.link)?;
    let link = SatelliteLink::new(s).map_err(model_err)?;
    let mut stations = Vec::new();
    for end in ["a", "b"] {
        let lat = p.num(&format!("lat-{end}"))?;
        let lon = p.num(&format!("lon-{end}"))?;
        let cloud = p.num(&format!("cloud-{end}"))?;
        match (lat, lon) {
            (Some(lat), Some(lon)) => {
                if !(-90.0..=90.0).contains(&lat) {
                    return Err(TechError::new(
                        format!("params.lat-{end}"),
                        format!("latitude {lat} is outside [-90, 90] degrees"),
                    ));
                }
                if !(-180.0..=360.0).contains(&lon) {
                    return Err(TechError::new(
                        format!("params.lon-{end}"),
                        format!("longitude {lon} is outside [-180, 360] degrees"),
                    ));
                }
                let cloud = cloud.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&cloud) {
                    return Err(TechError::new(
                        format!("params.cloud-{end}"),
                        format!("cloud probability {cloud} is outside [0, 1]"),
                    ));
                }
                stations.push((
                    Station {
                        lat_deg: lat,
                        lon_deg: lon,
                    },
                    cloud,
                ));
            }
            (None, None) => {
                if cloud.is_some() {
                    return Err(TechError::new(
                        format!("params.cloud-{end}"),
                        format!("given without lat-{end} and lon-{end}"),
                    ));
                }
            }
            (Some(_), None) => {
                return Err(TechError::new(
                    format!("params.lon-{end}"),
                    format!("missing (lat-{end} is given)"),
                ))
            }
            (None, Some(_)) => {
                return Err(TechError::new(
                    format!("params.lat-{end}"),
                    format!("missing (lon-{end} is given)"),
                ))
            }
        }
    }
    if stations.is_empty() {
        return Err(TechError::new(
            "params.lat-a",
            "a satellite link needs the ground station of at least one end (lat-a/lon-a, \
             and lat-b/lon-b when both ends are ground stations)",
        ));
    }
    let mut hold_h = 24.0;
    p.set("hold-hours", &mut hold_h)?;
    if !(hold_h > 0.0 && hold_h <= 24.0 * 366.0) {
        return Err(TechError::new(
            "params.hold-hours",
            format!("{hold_h} must be in (0, 8784] hours"),
        ));
    }
    let mut speedup = 1.0;
    p.set("clock-speedup", &mut speedup)?;
    if !(1.0..=10_000.0).contains(&speedup) {
        return Err(TechError::new(
            "params.clock-speedup",
            format!("{speedup} must be in [1, 10000]"),
        ));
    }
    Ok(SatelliteSetup {
        link,
        orbit,
        stations,
        hold_s: hold_h * 3600.0,
        clock_speedup: speedup,
    })
}

fn repeater(p: &mut Params<'_>) -> Result<RepeaterTech, TechError> {
    let mut r = RepeaterParams::default();
    p.set("alpha", &mut r.alpha_db_per_km)?;
    p.set("eta-emit", &mut r.eta_emit)?;
    p.set("eta-det", &mut r.eta_det)?;
    p.set("max-attempt-rate", &mut r.max_attempt_rate_hz)?;
    p.set("coherence-time", &mut r.coherence_time_s)?;
    if let Some(m) = p.num("modes")? {
        if !((1.0..=1e6).contains(&m) && m.fract() == 0.0) {
            return Err(TechError::new(
                "params.modes",
                format!("{m} must be a whole number in [1, 1000000]"),
            ));
        }
        r.modes = m as u32;
    }
    let alpha_b = p.num("alpha-b")?;
    match p.text("scheme")?.as_deref() {
        None | Some("two-photon") => {
            if alpha_b.is_some() {
                return Err(TechError::new(
                    "params.alpha-b",
                    "only used with scheme = \"single-photon\"",
                ));
            }
        }
        Some("single-photon") => {
            r.scheme = HeraldScheme::SinglePhoton {
                alpha_b: alpha_b.unwrap_or(0.1),
            }
        }
        Some(o) => {
            return Err(TechError::new(
                "params.scheme",
                format!("{o:?} (expected \"two-photon\" or \"single-photon\")"),
            ))
        }
    }
    let mut f = 1.16;
    let mut q = 0.5;
    p.set("f", &mut f)?;
    p.set("q", &mut q)?;
    if !(1.0..10.0).contains(&f) {
        return Err(TechError::new(
            "params.f",
            format!("{f} must be in [1, 10)"),
        ));
    }
    if !(q > 0.0 && q <= 1.0) {
        return Err(TechError::new("params.q", format!("{q} must be in (0, 1]")));
    }
    Ok(RepeaterTech {
        segment: RepeaterSegment::new(r).map_err(model_err)?,
        f,
        q,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, ParamValue)]) -> BTreeMap<String, ParamValue> {
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
    use ParamValue::{Num, Text};

    #[test]
    fn every_protocol_builds_with_defaults() {
        let none = BTreeMap::new();
        for proto in LINK_PROTOCOLS {
            if proto == "satellite" {
                continue;
            }
            let t = LinkTech::from_params(proto, &none).unwrap();
            assert_eq!(t.name(), proto);
            assert!(t.mean_rate_bps(20.0) > 0.0, "{proto}");
        }
        let sat = LinkTech::from_params(
            "satellite",
            &params(&[("lat-a", Num(35.7)), ("lon-a", Num(139.5))]),
        )
        .unwrap();
        assert!(sat.mean_rate_bps(0.0) > 0.0);
    }

    #[test]
    fn parameters_reach_the_model() {
        let slow = LinkTech::from_params("bb84-decoy", &params(&[("rep-rate", Num(1e8))]))
            .unwrap()
            .mean_rate_bps(20.0);
        let fast = LinkTech::from_params("bb84-decoy", &BTreeMap::new())
            .unwrap()
            .mean_rate_bps(20.0);
        assert!((fast / slow - 10.0).abs() < 1e-9);
        // Underscores are accepted for dashes.
        let ull = LinkTech::from_params("tf-sns", &params(&[("alpha", Num(0.16))])).unwrap();
        let std = LinkTech::from_params("tf-sns", &BTreeMap::new()).unwrap();
        assert!(ull.mean_rate_bps(400.0) > 5.0 * std.mean_rate_bps(400.0));
        let het = LinkTech::from_params(
            "cv-gg02",
            &params(&[("detection", Text("heterodyne".into()))]),
        );
        assert!(het.is_ok());
        let a = LinkTech::from_params("repeater", &params(&[("eta_emit", Num(0.9))])).unwrap();
        let b = LinkTech::from_params("repeater", &BTreeMap::new()).unwrap();
        assert!(a.mean_rate_bps(10.0) > b.mean_rate_bps(10.0));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |proto: &str, kv: &[(&str, ParamValue)]| {
            LinkTech::from_params(proto, &params(kv)).unwrap_err()
        };
        assert_eq!(err("bb84", &[]).field, "protocol");
        assert_eq!(err("bb84-decoy", &[("mu", Num(-1.0))]).field, "params.mu");
        assert_eq!(err("bb84-decoy", &[("e-d", Num(1.5))]).field, "params.e-d");
        assert_eq!(err("bb84-finite", &[("e-d", Num(1.5))]).field, "params.e-d");
        assert_eq!(err("bb84-finite", &[("n-x", Num(0.0))]).field, "params.n-x");
        let e = err("cv-gg02", &[("mu", Num(0.5))]);
        assert_eq!(e.field, "params.mu");
        assert!(e.message.contains("unknown parameter"), "{e}");
        assert_eq!(
            err("cv-gg02", &[("xi", Text("big".into()))]).field,
            "params.xi"
        );
        assert_eq!(
            err("cv-gg02", &[("detection", Text("eyes".into()))]).field,
            "params.detection"
        );
        assert_eq!(err("tf-sns", &[("eta-d", Num(2.0))]).field, "params.eta-d");
        assert_eq!(
            err("repeater", &[("modes", Num(0.5))]).field,
            "params.modes"
        );
        assert_eq!(
            err("repeater", &[("coherence-time", Num(0.0))]).field,
            "params.coherence-time"
        );
        assert_eq!(err("satellite", &[]).field, "params.lat-a");
        assert_eq!(
            err("satellite", &[("lat-a", Num(95.0)), ("lon-a", Num(0.0))]).field,
            "params.lat-a"
        );
        assert_eq!(
            err(
                "satellite",
                &[
                    ("lat-a", Num(35.0)),
                    ("lon-a", Num(0.0)),
                    ("cloud-a", Num(1.2))
                ]
            )
            .field,
            "params.cloud-a"
        );
        assert_eq!(
            err(
                "satellite",
                &[
                    ("lat-a", Num(35.0)),
                    ("lon-a", Num(0.0)),
                    ("altitude", Num(-5.0))
                ]
            )
            .field,
            "params.altitude"
        );
        assert_eq!(
            err(
                "satellite",
                &[
                    ("lat-a", Num(35.0)),
                    ("lon-a", Num(0.0)),
                    ("min-elevation", Num(91.0))
                ]
            )
            .field,
            "params.max-elevation"
        );
    }

    #[test]
    fn repeater_reaches_ten_events_per_second_over_ten_km_with_decoherence() {
        let LinkTech::Repeater(r) = LinkTech::from_params("repeater", &BTreeMap::new()).unwrap()
        else {
            unreachable!()
        };
        let k = r.key(10.0).unwrap();
        assert!(k.segment.events_per_s >= 10.0, "{k:?}");
        assert!(k.key_bps > 0.0 && k.qber < 0.01);
        // A short-lived memory raises the QBER and lowers the key rate.
        let poor =
            match LinkTech::from_params("repeater", &params(&[("coherence-time", Num(1e-4))]))
                .unwrap()
            {
                LinkTech::Repeater(r) => r.key(10.0).unwrap(),
                _ => unreachable!(),
            };
        assert!(poor.qber > k.qber && poor.key_bps < k.key_bps, "{poor:?}");
    }

    #[test]
    fn finite_key_delivers_whole_blocks() {
        let t = LinkTech::from_params("bb84-finite", &params(&[("n-x", Num(1e7))])).unwrap();
        match t.supply(30.0, 1.0, 1, 0.0) {
            KeySupply::Blocks { bits, period_s } => {
                assert!(bits > 1e5 && period_s > 0.0);
                assert!((bits / period_s / t.mean_rate_bps(30.0) - 1.0).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
    }
}
