//! Clearly synthetic electronic medical records in an SS-MIX2-like layout, for storage demos.
//!
//! Nothing here describes a real person: every name is `SYNTHETIC^PATIENTnnnnnn`, every patient
//! ID starts with `99`, and every message carries an `NTE` segment saying it is synthetic demo
//! data. The layout follows the shape of the SS-MIX2 standardized storage —
//! `pid[0..3]/pid[3..6]/pid/date/data-type/file`, one HL7 v2.5-style message per file, file names
//! `pid_date_type_order_timestamp_dept_1` — with data-type folders `ADT-00` (patient
//! demographics, date folder `-`), `ADT-12` (outpatient visit), `OMP-01` (prescription order) and
//! `OUL-01` (lab results). It is "-like": fields are plausible, not validated against the standard.
//!
//! Generation is deterministic for a seed, so a demo can regenerate the records and compare them
//! byte for byte after a restore.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmrConfig {
    /// Number of patients (records).
    pub patients: usize,
    /// Seed: the same seed gives the same files.
    pub seed: u64,
    /// Most visits per patient (each patient gets 1 to this many).
    pub max_visits: usize,
}

impl Default for EmrConfig {
    fn default() -> Self {
        Self {
            patients: 1000,
            seed: 1,
            max_visits: 4,
        }
    }
}

/// One generated file: a path relative to the storage root and its contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmrFile {
    /// Relative path (`/`-separated components).
    pub path: PathBuf,
    /// File contents (HL7 v2-style segments separated by `\r`).
    pub contents: Vec<u8>,
}

/// Counts of what [`write_to_dir`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmrSummary {
    /// Patients generated.
    pub patients: usize,
    /// Files written.
    pub files: usize,
    /// Total bytes written.
    pub bytes: u64,
}

const DRUGS: &[(&str, &str, &str)] = &[
    (
        "SYN-AMLO5",
        "Amlodipine 5mg tab (synthetic)",
        "1 tab once daily",
    ),
    (
        "SYN-METF500",
        "Metformin 500mg tab (synthetic)",
        "1 tab twice daily",
    ),
    (
        "SYN-ATOR10",
        "Atorvastatin 10mg tab (synthetic)",
        "1 tab at bedtime",
    ),
    (
        "SYN-LOXO60",
        "Loxoprofen 60mg tab (synthetic)",
        "1 tab three times daily",
    ),
    (
        "SYN-FAMO20",
        "Famotidine 20mg tab (synthetic)",
        "1 tab twice daily",
    ),
    (
        "SYN-LEVO500",
        "Levofloxacin 500mg tab (synthetic)",
        "1 tab once daily",
    ),
];

/// (code, name, unit, low, high, decimals)
const LABS: &[(&str, &str, &str, f64, f64, u32)] = &[
    ("SYN-HBA1C", "HbA1c", "%", 4.6, 6.2, 1),
    ("SYN-GLU", "Glucose", "mg/dL", 73.0, 109.0, 0),
    ("SYN-AST", "AST", "U/L", 13.0, 30.0, 0),
    ("SYN-ALT", "ALT", "U/L", 10.0, 42.0, 0),
    ("SYN-CRE", "Creatinine", "mg/dL", 0.46, 1.07, 2),
    ("SYN-HGB", "Hemoglobin", "g/dL", 11.6, 16.8, 1),
    ("SYN-LDL", "LDL cholesterol", "mg/dL", 65.0, 139.0, 0),
];

const DEPTS: &[&str] = &["01", "05", "10", "13", "21"];

/// Civil date (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn date_str(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}

struct Gen {
    rng: ChaCha8Rng,
}

impl Gen {
    fn below(&mut self, n: u64) -> u64 {
        // Modulo bias is irrelevant for demo data.
        self.rng.next_u64() % n.max(1)
    }
    fn range_f(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn msh(kind: &str, ts: &str, ctrl: &str) -> String {
    format!("MSH|^~\\&|KAGI-DEMO|SYNTHETIC-HOSP|||{ts}||{kind}|{ctrl}|P|2.5||||||~ISO IR87||ISO 2022-1994\r")
}

const NTE: &str = "NTE|1||SYNTHETIC DEMO DATA - NOT A REAL PERSON\r";

fn file(
    pid: &str,
    date: &str,
    kind: &str,
    order: &str,
    ts: &str,
    dept: &str,
    body: String,
) -> EmrFile {
    let name = format!("{pid}_{date}_{kind}_{order}_{ts}_{dept}_1");
    let path: PathBuf = [&pid[..3], &pid[3..6], pid, date, kind, &name]
        .iter()
        .collect();
    EmrFile {
        path,
        contents: body.into_bytes(),
    }
}

/// Generates the files of patient number `i` (0-based) for `cfg`.
pub fn generate_patient(cfg: &EmrConfig, i: usize) -> Vec<EmrFile> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&cfg.seed.to_le_bytes());
    seed[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    seed[16..].copy_from_slice(b"kagi-demo-emr/v1");
    let mut g = Gen {
        rng: ChaCha8Rng::from_seed(seed),
    };
    let pid = format!("99{:08}", i + 1);
    let sex = if g.below(2) == 0 { "M" } else { "F" };
    let birth = date_str(-20_000 + g.below(25_000) as i64);
    let first_visit = 20_089 + g.below(300) as i64; // 2025-01-01 onwards
    let mut out = Vec::new();

    let reg_ts = format!("{}090000000", date_str(first_visit));
    let mut adt = msh("ADT^A08^ADT_A01", &reg_ts, &format!("{pid}-00"));
    let _ = write!(
        adt,
        "EVN||{reg_ts}\rPID|||{pid}^^^^PI||SYNTHETIC^PATIENT{:06}||{birth}|{sex}|||^^SYNTHETIC CITY^^000-0000||^PRN^PH^^^^^^^000-0000-{:04}\r{NTE}",
        i + 1,
        g.below(10_000)
    );
    out.push(file(&pid, "-", "ADT-00", "9999999999", &reg_ts, "-", adt));

    let visits = 1 + g.below(cfg.max_visits.max(1) as u64) as usize;
    let mut day = first_visit;
    for v in 0..visits {
        day += 7 + g.below(90) as i64;
        let date = date_str(day);
        let dept = DEPTS[g.below(DEPTS.len() as u64) as usize];
        let ts = format!("{date}{:02}{:02}00000", 9 + g.below(8), g.below(60));
        let order_base = (i as u64 + 1) * 100 + v as u64 * 10;

        let mut visit = msh("ADT^A04^ADT_A01", &ts, &format!("{pid}-V{v}"));
        let _ = write!(
            visit,
            "EVN||{ts}\rPID|||{pid}^^^^PI||SYNTHETIC^PATIENT{:06}||{birth}|{sex}\rPV1||O|{dept}^^^SYNTHETIC-HOSP||||SYN-DR{:03}^SYNTHETIC^DOCTOR\r{NTE}",
            i + 1,
            g.below(50)
        );
        out.push(file(
            &pid,
            &date,
            "ADT-12",
            &format!("{order_base:010}"),
            &ts,
            dept,
            visit,
        ));

        if g.below(3) != 0 {
            let order = format!("{:010}", order_base + 1);
            let mut rx = msh("RDE^O11^RDE_O11", &ts, &format!("{pid}-RX{v}"));
            let _ = write!(rx, "PID|||{pid}^^^^PI||SYNTHETIC^PATIENT{:06}\r", i + 1);
            let _ = write!(rx, "ORC|NW|{order}|||||||{ts}\r");
            for line in 0..1 + g.below(3) {
                let (code, name, sig) = DRUGS[g.below(DRUGS.len() as u64) as usize];
                let days = [7, 14, 28, 30, 56][g.below(5) as usize];
                let _ = write!(
                    rx,
                    "RXE|1^^^{date}^^^{days}|{code}^{name}^SYN|1||TAB^tablet|||{sig}|{}\rTQ1|{}|||||{days}^D\r",
                    days,
                    line + 1
                );
            }
            rx.push_str(NTE);
            out.push(file(&pid, &date, "OMP-01", &order, &ts, dept, rx));
        }

        if g.below(2) == 0 {
            let order = format!("{:010}", order_base + 2);
            let mut lab = msh("OUL^R22^OUL_R22", &ts, &format!("{pid}-LAB{v}"));
            let _ = write!(lab, "PID|||{pid}^^^^PI||SYNTHETIC^PATIENT{:06}\r", i + 1);
            let _ = write!(
                lab,
                "SPM|1|||BLD^blood^HL70487\rOBR|1|{order}||SYN-PANEL^synthetic panel^SYN|||{ts}\r"
            );
            for (n, &(code, name, unit, lo, hi, dec)) in LABS.iter().enumerate() {
                if g.below(3) == 0 {
                    continue;
                }
                let val = g.range_f(lo * 0.8, hi * 1.25);
                let flag = if val < lo {
                    "L"
                } else if val > hi {
                    "H"
                } else {
                    "N"
                };
                let _ = write!(
                    lab,
                    "OBX|{}|NM|{code}^{name}^SYN||{val:.prec$}|{unit}|{lo}-{hi}|{flag}|||F\r",
                    n + 1,
                    prec = dec as usize
                );
            }
            lab.push_str(NTE);
            out.push(file(&pid, &date, "OUL-01", &order, &ts, dept, lab));
        }
    }
    out
}

/// Generates every file for `cfg`, patient by patient.
pub fn generate(cfg: &EmrConfig) -> Vec<EmrFile> {
    (0..cfg.patients)
        .flat_map(|i| generate_patient(cfg, i))
        .collect()
}

/// Writes the files for `cfg` under `dir` (created if missing) and says what was written.
pub fn write_to_dir(dir: &Path, cfg: &EmrConfig) -> std::io::Result<EmrSummary> {
    let mut sum = EmrSummary {
        patients: cfg.patients,
        ..Default::default()
    };
    for i in 0..cfg.patients {
        for f in generate_patient(cfg, i) {
            let path = dir.join(&f.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &f.contents)?;
            sum.files += 1;
            sum.bytes += f.contents.len() as u64;
        }
    }
    Ok(sum)
}

/// ICD-10 code of a patient's primary diagnosis, derived from the first drug prescribed (the
/// generator has no diagnosis segment; this keeps the table consistent with the records).
fn diagnosis_of(drug: Option<&str>) -> &'static str {
    match drug {
        Some("SYN-METF500") => "E11", // type 2 diabetes
        Some("SYN-AMLO5") => "I10",   // hypertension
        Some("SYN-ATOR10") => "E78",  // lipid disorder
        Some("SYN-LOXO60") => "M54",  // back pain
        Some("SYN-FAMO20") => "K21",  // reflux
        Some("SYN-LEVO500") => "J18", // pneumonia
        _ => "Z00",                   // general examination
    }
}

/// Age band labels of [`patient_table_csv`].
pub const AGE_BANDS: &[&str] = &["<60", "60-69", "70-79", "80-89", "90+"];

/// Diagnosis codes of [`patient_table_csv`].
pub const DIAGNOSES: &[&str] = &["E11", "E78", "I10", "J18", "K21", "M54", "Z00"];

/// The schema of [`patient_table_csv`] for `kagi vault put-table --schema`.
pub const PATIENT_SCHEMA: &str = "sex:cat(F|M),age:int,age_band:cat(<60|60-69|70-79|80-89|90+),\
dx:cat(E11|E78|I10|J18|K21|M54|Z00),visits:int,hba1c:fixed(1),glucose:int";

/// One row per patient, read back from the generated records: `patient_id, sex, age` (on
/// 2026-01-01), `age_band, dx` (primary diagnosis, ICD-10), `visits`, `hba1c` (last result, %,
/// empty if never measured) and `glucose` (last result, mg/dL, empty if never measured), as CSV
/// with a header row.
pub fn patient_table_csv(cfg: &EmrConfig) -> String {
    let mut out = String::from("patient_id,sex,age,age_band,dx,visits,hba1c,glucose\n");
    for i in 0..cfg.patients {
        let files = generate_patient(cfg, i);
        let (mut sex, mut birth) = (String::new(), String::new());
        let (mut drug, mut hba1c, mut glucose) = (None::<String>, None::<String>, None::<String>);
        let mut visits = 0;
        for f in &files {
            let text = String::from_utf8_lossy(&f.contents);
            let kind = f
                .path
                .iter()
                .nth(4)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            for seg in text.split('\r') {
                let fields: Vec<&str> = seg.split('|').collect();
                match (kind.as_str(), fields.first().copied()) {
                    ("ADT-00", Some("PID")) => {
                        birth = fields.get(7).unwrap_or(&"").to_string();
                        sex = fields.get(8).unwrap_or(&"").to_string();
                    }
                    ("ADT-12", Some("PV1")) => visits += 1,
                    ("OMP-01", Some("RXE")) if drug.is_none() => {
                        drug = fields
                            .get(2)
                            .and_then(|f| f.split('^').next())
                            .map(str::to_string);
                    }
                    ("OUL-01", Some("OBX")) => {
                        let code = fields.get(3).and_then(|f| f.split('^').next());
                        let val = fields.get(5).map(|v| v.to_string());
                        match code {
                            Some("SYN-HBA1C") => hba1c = val,
                            Some("SYN-GLU") => glucose = val,
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
        }
        let by: i64 = birth.get(..4).and_then(|y| y.parse().ok()).unwrap_or(1970);
        let md: i64 = birth.get(4..8).and_then(|y| y.parse().ok()).unwrap_or(101);
        // Age on 2026-01-01: a birthday on 1 January counts as reached.
        let age = 2026 - by - i64::from(md > 101);
        let band = match age {
            a if a < 60 => 0,
            a if a < 70 => 1,
            a if a < 80 => 2,
            a if a < 90 => 3,
            _ => 4,
        };
        let _ = writeln!(
            out,
            "99{:08},{sex},{age},{},{},{visits},{},{}",
            i + 1,
            AGE_BANDS[band],
            diagnosis_of(drug.as_deref()),
            hba1c.unwrap_or_default(),
            glucose.unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_table_is_one_row_per_patient() {
        let cfg = EmrConfig {
            patients: 50,
            seed: 3,
            max_visits: 4,
        };
        let csv = patient_table_csv(&cfg);
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 51);
        assert!(rows[0].starts_with("patient_id,sex,age"));
        for r in &rows[1..] {
            let f: Vec<&str> = r.split(',').collect();
            assert_eq!(f.len(), 8, "{r}");
            assert!(f[0].starts_with("99"));
            assert!(["F", "M"].contains(&f[1]));
            let age: i64 = f[2].parse().unwrap();
            assert!((18..=115).contains(&age), "{age}");
            assert!(AGE_BANDS.contains(&f[3]));
            assert!(DIAGNOSES.contains(&f[4]));
            assert!(f[5].parse::<u32>().unwrap() >= 1);
            if !f[6].is_empty() {
                let h: f64 = f[6].parse().unwrap();
                assert!((3.0..8.0).contains(&h), "{h}");
            }
        }
        assert!(rows.iter().any(|r| r.split(',').nth(6) == Some("")));
        assert!(rows.iter().any(|r| r.split(',').nth(4) == Some("E11")));
    }

    #[test]
    fn dates() {
        assert_eq!(date_str(0), "19700101");
        assert_eq!(date_str(20_089), "20250101");
        assert_eq!(date_str(-1), "19691231");
        assert_eq!(date_str(11_016), "20000229");
    }

    #[test]
    fn deterministic_synthetic_and_laid_out() {
        let cfg = EmrConfig {
            patients: 30,
            seed: 7,
            max_visits: 3,
        };
        let a = generate(&cfg);
        assert_eq!(a, generate(&cfg));
        assert_ne!(
            a,
            generate(&EmrConfig {
                seed: 8,
                ..cfg.clone()
            })
        );
        for f in &a {
            let text = String::from_utf8(f.contents.clone()).unwrap();
            assert!(text.starts_with("MSH|"), "{text}");
            assert!(text.contains("SYNTHETIC DEMO DATA"));
            let parts: Vec<_> = f.path.iter().map(|p| p.to_str().unwrap()).collect();
            assert_eq!(parts.len(), 6, "{:?}", f.path);
            assert!(parts[2].starts_with("99") && parts[2].len() == 10);
            assert_eq!(parts[0], &parts[2][..3]);
            assert_eq!(parts[1], &parts[2][3..6]);
            assert!(["ADT-00", "ADT-12", "OMP-01", "OUL-01"].contains(&parts[4]));
            assert!(parts[5].starts_with(&format!("{}_{}_{}_", parts[2], parts[3], parts[4])));
        }
        // Each patient has demographics and at least one visit.
        let adt00 = a
            .iter()
            .filter(|f| f.path.to_str().unwrap().contains("ADT-00"))
            .count();
        assert_eq!(adt00, 30);
        assert!(a
            .iter()
            .any(|f| f.path.to_str().unwrap().contains("OMP-01")));
        assert!(a
            .iter()
            .any(|f| f.path.to_str().unwrap().contains("OUL-01")));
        // Patient files are independent of how many patients are generated.
        let fewer = generate(&EmrConfig {
            patients: 3,
            ..cfg.clone()
        });
        assert_eq!(&a[..fewer.len()], &fewer[..]);
    }

    #[test]
    fn writes_files() {
        let dir = std::env::temp_dir().join(format!("kagi-emr-test-{}", std::process::id()));
        let cfg = EmrConfig {
            patients: 5,
            seed: 1,
            max_visits: 2,
        };
        let sum = write_to_dir(&dir, &cfg).unwrap();
        let files = generate(&cfg);
        assert_eq!(sum.files, files.len());
        for f in &files {
            assert_eq!(std::fs::read(dir.join(&f.path)).unwrap(), f.contents);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
