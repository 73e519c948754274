//! The storage walkthrough in one process: synthetic medical records stored (3,5) over five
//! sites, two sites destroyed, every record restored byte for byte; plus repair, refresh,
//! tampering, a failure half-way through a put, and key shortage.

use std::path::{Path, PathBuf};

use kagi_sharing::demo_emr::{generate_patient, EmrConfig, EmrFile};
use kagi_vault::client::{get, list, put, refresh, repair};
use kagi_vault::keys::{MemoryKeySupply, MemoryKms};
use kagi_vault::site::Site;
use kagi_vault::VaultError;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-vault-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sites(kms: &MemoryKms, root: &Path, n: usize) -> Vec<Site<MemoryKeySupply>> {
    (1..=n)
        .map(|i| {
            Site::new(
                root.join(format!("site{i}")),
                kms.party(&format!("vault-site-{i}")),
            )
        })
        .collect()
}

/// One record = one patient's files, packed as (path, contents) pairs.
fn pack(files: &[EmrFile]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in files {
        let p = f.path.to_string_lossy();
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(&(f.contents.len() as u32).to_le_bytes());
        out.extend_from_slice(&f.contents);
    }
    out
}

#[test]
fn store_records_destroy_two_sites_restore_everything() {
    let root = tempdir("walkthrough");
    let kms = MemoryKms::new(1024, None);
    let mut owner = kms.party("hospital-backup");
    let mut s = sites(&kms, &root, 5);
    let cfg = EmrConfig {
        patients: 40,
        seed: 2026,
        max_visits: 3,
    };
    let mut stored = Vec::new();
    for i in 0..cfg.patients {
        let record = pack(&generate_patient(&cfg, i));
        let r = put(&mut owner, &mut s, &format!("patient-{i}"), &record, 3, 5).unwrap();
        // Every share travels under its own one-time pad: at least n × len bytes of key.
        assert!(
            r.key_bytes >= 5 * record.len() as u64,
            "{} < {}",
            r.key_bytes,
            5 * record.len()
        );
        stored.push((r.object, i));
    }
    assert_eq!(list(&mut s).unwrap().len(), cfg.patients);

    // A disaster destroys two sites.
    std::fs::remove_dir_all(s[1].dir()).unwrap();
    std::fs::remove_dir_all(s[3].dir()).unwrap();
    for (object, i) in &stored {
        let g = get(&mut owner, &mut s, object).unwrap();
        assert_eq!(
            g.data.expose(),
            &pack(&generate_patient(&cfg, *i))[..],
            "record {i}"
        );
        assert_eq!(g.missing, vec!["vault-site-2", "vault-site-4"]);
        assert!(g.corrupted.is_empty());
    }

    // Rebuild the lost sites' shares of one record, then lose two other sites.
    let (object, i) = &stored[7];
    repair(&mut s, object, "vault-site-2").unwrap();
    repair(&mut s, object, "vault-site-4").unwrap();
    std::fs::remove_dir_all(s[0].dir()).unwrap();
    std::fs::remove_dir_all(s[2].dir()).unwrap();
    let g = get(&mut owner, &mut s, object).unwrap();
    assert_eq!(g.data.expose(), &pack(&generate_patient(&cfg, *i))[..]);
    assert_eq!(
        g.answered,
        vec!["vault-site-2", "vault-site-4", "vault-site-5"]
    );
    // A record that was not repaired now has only one share left: a clean error.
    let e = get(&mut owner, &mut s, &stored[8].0).unwrap_err();
    assert!(
        matches!(
            e,
            VaultError::NotEnoughSites {
                needed: 3,
                got: 1,
                ..
            }
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

fn share_file(site: &Site<MemoryKeySupply>, object: &str) -> PathBuf {
    site.share_path(object).unwrap()
}

fn share_files(site: &Site<MemoryKeySupply>, object: &str) -> usize {
    std::fs::read_dir(site.dir().join("objects").join(object))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("share.")
        })
        .count()
}

#[test]
fn interrupted_refresh_is_finished_or_discarded() {
    let root = tempdir("interrupted");
    let kms = MemoryKms::new(256, None);
    let mut owner = kms.party("owner");
    let mut s = sites(&kms, &root, 5);
    let data = b"a record that outlives its sites".to_vec();
    let r = put(&mut owner, &mut s, "r", &data, 3, 5).unwrap();
    let o = r.object.as_str();

    // Everyone prepared, two committed, then the coordinator died.
    let mut inbox: Vec<Vec<kagi_vault::envelope::Envelope>> = vec![Vec::new(); 5];
    for site in s.iter_mut() {
        for env in site.refresh_deal(o).unwrap() {
            let to = kagi_vault::envelope::peek(&env.0).unwrap().to;
            inbox[to
                .trim_start_matches("vault-site-")
                .parse::<usize>()
                .unwrap()
                - 1]
            .push(env);
        }
    }
    for i in 0..5 {
        let m = std::mem::take(&mut inbox[i]);
        s[i].refresh_apply(o, &m).unwrap();
    }
    s[0].refresh_commit(o).unwrap();
    s[1].refresh_commit(o).unwrap();
    // Sites 3-5 still hold epoch 0; a get rolls them forward and reads epoch 1 from all five.
    let g = get(&mut owner, &mut s, o).unwrap();
    assert_eq!(g.data.expose(), &data[..]);
    assert_eq!(g.manifest.epoch, 1);
    assert_eq!(
        g.answered.len(),
        3,
        "only k shares are fetched when they check out"
    );
    for site in &s {
        assert_eq!(share_files(site, o), 1, "no share of an old epoch is kept");
    }

    // Only three sites prepared and nobody committed: the preparation is discarded.
    let before: Vec<Vec<u8>> = s
        .iter()
        .map(|x| std::fs::read(share_file(x, o)).unwrap())
        .collect();
    for site in s.iter_mut() {
        for env in site.refresh_deal(o).unwrap() {
            let to = kagi_vault::envelope::peek(&env.0).unwrap().to;
            inbox[to
                .trim_start_matches("vault-site-")
                .parse::<usize>()
                .unwrap()
                - 1]
            .push(env);
        }
    }
    for i in 0..3 {
        let m = std::mem::take(&mut inbox[i]);
        s[i].refresh_apply(o, &m).unwrap();
        assert_eq!(s[i].has_prepared_refresh(o), Some(2));
    }
    let g = get(&mut owner, &mut s, o).unwrap();
    assert_eq!(g.data.expose(), &data[..]);
    assert_eq!(g.manifest.epoch, 1);
    for (site, b) in s.iter().zip(&before) {
        assert!(site.has_prepared_refresh(o).is_none());
        assert_eq!(&std::fs::read(share_file(site, o)).unwrap(), b);
        assert_eq!(share_files(site, o), 1);
    }
    refresh(&mut s, o).unwrap(); // a full refresh still works afterwards
    let g = get(&mut owner, &mut s, o).unwrap();
    assert_eq!(g.data.expose(), &data[..]);
    assert_eq!(g.manifest.epoch, 2);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn refresh_tamper_and_correct() {
    let root = tempdir("refresh");
    let kms = MemoryKms::new(256, None);
    let mut owner = kms.party("owner");
    let mut s = sites(&kms, &root, 5);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let r = put(&mut owner, &mut s, "genome.bin", &data, 3, 5).unwrap();
    let before: Vec<Vec<u8>> = s
        .iter()
        .map(|x| std::fs::read(share_file(x, &r.object)).unwrap())
        .collect();

    let spent = refresh(&mut s, &r.object).unwrap();
    assert!(
        spent >= 5 * 4 * data.len() as u64,
        "each site sends n − 1 updates"
    );
    let after: Vec<Vec<u8>> = s
        .iter()
        .map(|x| std::fs::read(share_file(x, &r.object)).unwrap())
        .collect();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a, "every share changes");
    }
    let g = get(&mut owner, &mut s, &r.object).unwrap();
    assert_eq!(g.data.expose(), &data[..]);
    assert_eq!(g.manifest.epoch, 1);

    // A site's share is altered on disk: the first three shares fail the object MAC, the other
    // two are fetched, and Reed–Solomon decoding names the bad one; the object comes back intact.
    let f = share_file(&s[2], &r.object);
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(&f, &bytes).unwrap();
    let g = get(&mut owner, &mut s, &r.object).unwrap();
    assert_eq!(g.data.expose(), &data[..]);
    assert_eq!(g.corrupted, vec!["vault-site-3"]);

    // With only three shares left, one of them bad, the whole-object MAC refuses the result.
    std::fs::remove_dir_all(s[0].dir()).unwrap();
    std::fs::remove_dir_all(s[4].dir()).unwrap();
    let e = get(&mut owner, &mut s, &r.object).unwrap_err();
    assert!(matches!(e, VaultError::ObjectCorrupt(_)), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn failure_half_way_leaves_nothing_valid_and_retry_completes() {
    let root = tempdir("halfway");
    let kms = MemoryKms::new(256, None);
    let mut owner = kms.party("owner");
    let mut s = sites(&kms, &root, 5);
    // Site 4 cannot write (its directory path is taken by a file): it "dies" during the put.
    std::fs::write(s[3].dir(), b"not a directory").unwrap();
    let e = put(&mut owner, &mut s, "x", b"record bytes", 3, 5).unwrap_err();
    assert!(
        matches!(&e, VaultError::Site { site, .. } if site == "vault-site-4"),
        "{e}"
    );
    assert!(
        list(&mut s).unwrap().is_empty(),
        "no site shows the half-stored object"
    );
    // The owner rolled the put back at the sites that had stored a share.
    for site in &s[..3] {
        assert_eq!(
            std::fs::read_dir(site.dir().join("pending"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
    }
    std::fs::remove_file(s[3].dir()).unwrap();
    let r = put(&mut owner, &mut s, "x", b"record bytes", 3, 5).unwrap();
    assert_eq!(
        get(&mut owner, &mut s, &r.object).unwrap().data.expose(),
        b"record bytes"
    );
    assert_eq!(list(&mut s).unwrap().len(), 1);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn key_shortage_fails_cleanly() {
    let root = tempdir("shortage");
    // Enough key for about two of the five share transfers of a 4 KiB object.
    let kms = MemoryKms::new(1024, Some(10 * 1024));
    let mut owner = kms.party("owner");
    let mut s = sites(&kms, &root, 5);
    let e = put(&mut owner, &mut s, "big", &[7u8; 4096], 3, 5).unwrap_err();
    assert!(matches!(e, VaultError::KeyShortage { .. }), "{e}");
    assert!(list(&mut s).unwrap().is_empty());
    assert!(get(&mut owner, &mut s, "not-a-uuid").is_err());
    assert!(matches!(
        put(&mut owner, &mut s, "y", b"z", 4, 3),
        Err(VaultError::Sharing(
            kagi_sharing::SharingError::ThresholdExceedsShares { k: 4, n: 3 }
        ))
    ));
    std::fs::remove_dir_all(&root).unwrap();
}
