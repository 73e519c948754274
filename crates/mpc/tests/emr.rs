//! The medical-records demo: 10,000 synthetic patients as a shared table; the three EMR queries
//! give the same answers under MPC as in the clear, small groups are suppressed, malformed
//! queries fail before anything runs, and corrupted shares abort a malicious run.

use std::collections::BTreeMap;

use kagi_mpc::query::{parse, plan};
use kagi_mpc::sim::query_local;
use kagi_mpc::table::{encode_csv, os_words, parse_schema, share_table, EncodedTable, TableShare};
use kagi_mpc::{MpcError, Security};
use kagi_sharing::demo_emr::{patient_table_csv, EmrConfig, PATIENT_SCHEMA};

struct Row {
    age: i64,
    band: String,
    dx: String,
    hba1c: Option<f64>,
}

fn table(patients: usize) -> (String, EncodedTable, [TableShare; 3]) {
    let csv = patient_table_csv(&EmrConfig {
        patients,
        seed: 1,
        max_visits: 4,
    });
    let t = encode_csv(&csv, &parse_schema(PATIENT_SCHEMA).unwrap()).unwrap();
    let s = share_table(&t, &mut os_words());
    (csv, t, s)
}

fn rows(csv: &str) -> Vec<Row> {
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Row {
                age: f[2].parse().unwrap(),
                band: f[3].into(),
                dx: f[4].into(),
                hba1c: f[6].parse().ok(),
            }
        })
        .collect()
}

fn run(
    t: &EncodedTable,
    s: &[TableShare; 3],
    q: &str,
    sec: Security,
) -> kagi_mpc::Result<serde_json::Value> {
    let p = plan(&t.schema, &parse(q)?)?;
    Ok(query_local(s, &t.schema, &p, sec, 10)?.result)
}

#[test]
fn emr_queries_match_the_clear_on_10000_patients() {
    let (csv, t, s) = table(10_000);
    let rs = rows(&csv);
    // 1. Patients per diagnosis code.
    let r = run(&t, &s, "count group by dx", Security::SemiHonest).unwrap();
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for x in &rs {
        *want.entry(x.dx.clone()).or_default() += 1;
    }
    for g in r["groups"].as_array().unwrap() {
        let dx = g["dx"].as_str().unwrap();
        assert_eq!(g["count"].as_i64().unwrap(), want[dx], "{dx}");
    }
    // 2. Mean HbA1c per age band (NULLs skipped), in malicious mode.
    let r = run(
        &t,
        &s,
        "mean(hba1c), count(hba1c) group by age_band",
        Security::Malicious,
    )
    .unwrap();
    for g in r["groups"].as_array().unwrap() {
        let band = g["age_band"].as_str().unwrap();
        let vals: Vec<f64> = rs
            .iter()
            .filter(|x| x.band == band)
            .filter_map(|x| x.hba1c)
            .collect();
        if vals.len() < 10 {
            assert!(g.get("suppressed").is_some(), "{band}: {g}");
            continue;
        }
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        assert_eq!(g["count(hba1c)"].as_i64().unwrap(), vals.len() as i64);
        assert!(
            (g["mean(hba1c)"].as_f64().unwrap() - mean).abs() < 1e-9,
            "{band}"
        );
    }
    // 3. Patients over a threshold.
    let r = run(&t, &s, "count where hba1c >= 6.5", Security::SemiHonest).unwrap();
    let over = rs
        .iter()
        .filter(|x| x.hba1c.is_some_and(|h| h >= 6.5 - 1e-9))
        .count();
    assert_eq!(r["count"].as_i64().unwrap(), over as i64);
}

#[test]
fn predicates_variance_histogram_and_suppression() {
    let (csv, t, s) = table(600);
    let rs = rows(&csv);
    let r = run(
        &t,
        &s,
        "count, var(age), mean(age) where (dx = E11 or dx = 'I10') and age > 70 and not hba1c < 5",
        Security::Malicious,
    )
    .unwrap();
    let sel: Vec<&Row> = rs
        .iter()
        .filter(|x| {
            (x.dx == "E11" || x.dx == "I10") && x.age > 70 && x.hba1c.is_some_and(|h| h >= 5.0)
        })
        .collect();
    assert_eq!(r["count"].as_i64().unwrap(), sel.len() as i64);
    let n = sel.len() as f64;
    let mean = sel.iter().map(|x| x.age as f64).sum::<f64>() / n;
    let var = sel
        .iter()
        .map(|x| (x.age as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    assert!((r["var(age)"].as_f64().unwrap() - var).abs() < 1e-6, "{r}");
    assert!((r["mean(age)"].as_f64().unwrap() - mean).abs() < 1e-9);

    let r = run(&t, &s, "histogram(age, 40, 100, 6)", Security::SemiHonest).unwrap();
    for b in r["bins"].as_array().unwrap() {
        let (lo, hi) = (
            b["lo"].as_f64().unwrap() as i64,
            b["hi"].as_f64().unwrap() as i64,
        );
        let c = rs.iter().filter(|x| x.age >= lo && x.age < hi).count();
        if c < 10 {
            assert!(
                b.get("suppressed").is_some() && b.get("count").is_none(),
                "{b}"
            );
        } else {
            assert_eq!(b["count"].as_i64().unwrap(), c as i64, "{b}");
        }
    }
    // A query that would reveal one record is refused (the count stays inside the computation).
    let oldest = rs.iter().max_by_key(|x| x.age).unwrap();
    let few = rs
        .iter()
        .filter(|x| x.age >= oldest.age && x.dx == oldest.dx)
        .count();
    assert!((1..10).contains(&few));
    let q = format!(
        "mean(age) where age >= {} and dx = {}",
        oldest.age, oldest.dx
    );
    let e = run(&t, &s, &q, Security::SemiHonest).unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");

    // Malformed or ill-typed queries: clear errors before anything runs.
    for (q, why) in [
        ("count where", "expected a column name"),
        ("count where nosuch > 3", "no column"),
        ("count where dx > 3", "categorical"),
        ("count where dx = 'X99'", "not a category"),
        ("sum(dx)", "categorical"),
        ("count group by age", "GROUP BY needs a categorical column"),
        ("count where age > 'old'", "not a number"),
        ("mean(hba1c) where hba1c > 6.55", "more decimals"),
        ("histogram(age, 10, 5, 3)", "lo must be below hi"),
        ("count, histogram(age, 0, 10, 2)", "only aggregate"),
        ("count where age >", "expected a number or a category"),
        ("median(age)", "expected count"),
        ("count where age > 3 extra", "unexpected text"),
    ] {
        let e = parse(q).and_then(|x| plan(&t.schema, &x)).unwrap_err();
        assert!(matches!(e, MpcError::Invalid(_)));
        assert!(e.to_string().contains(why), "{q}: {e}");
    }
}

#[test]
fn corrupted_shares_at_one_site_abort_a_malicious_query() {
    let (_, t, mut s) = table(200);
    // One copy of one share of one stored value changes at site 1.
    let col = s[1].columns.get_mut("age").unwrap();
    col.a[17] = col.a[17].wrapping_add(5);
    let e = run(&t, &s, "count where age > 70", Security::Malicious).unwrap_err();
    assert!(matches!(e, MpcError::CheatingDetected(_)), "{e}");
    // Semi-honest mode has no such check: the run completes (with a wrong answer).
    assert!(run(&t, &s, "count where age > 70", Security::SemiHonest).is_ok());
}
