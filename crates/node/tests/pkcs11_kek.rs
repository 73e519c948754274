//! The PKCS#11 KEK against SoftHSM2 (Debian's `softhsm2`; `.ci/run` installs it): a node's store
//! and link secrets sealed under a non-extractable key on a private token, unsealed again, a
//! node started on it, a wrong PIN and an extractable key refused, and `kagi seal rewrap`
//! rotating to a new token key after which the old one no longer opens the store, and a
//! crypto-erase destroying the token key only when configured to.

use std::path::Path;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use kagi_node::config::NodeConfig;
use kagi_node::seal::kek::KekKind;
use kagi_node::seal::pkcs11::Pkcs11Config;

const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];
const TOKEN: &str = "kagi-test";
const PIN: &str = "4321";

fn ctx(module: &str) -> Pkcs11 {
    let c = Pkcs11::new(module).unwrap();
    match c.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    c
}

/// A fresh token labelled [`TOKEN`] with user PIN [`PIN`] in a private SoftHSM2 directory.
fn init_token(module: &str, dir: &Path) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let c = ctx(module);
    let slot = c.get_slots_with_token().unwrap()[0];
    let so = AuthPin::from("so-secret".to_string());
    c.init_token(slot, &so, TOKEN).unwrap();
    let slot = c
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| c.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let s = c.open_rw_session(slot).unwrap();
    s.login(UserType::So, Some(&so)).unwrap();
    s.init_pin(&AuthPin::from(PIN.to_string())).unwrap();
}

/// Runs `f` on a logged-in session of the test token.
fn with_session<T>(module: &str, f: impl FnOnce(&cryptoki::session::Session) -> T) -> T {
    let c = ctx(module);
    let slot = c
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| c.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let s = c.open_rw_session(slot).unwrap();
    let _ = s.login(UserType::User, Some(&AuthPin::from(PIN.to_string())));
    f(&s)
}

fn labels(module: &str) -> Vec<String> {
    with_session(module, |s| {
        s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap()
            .into_iter()
            .filter_map(|h| {
                s.get_attributes(h, &[AttributeType::Label])
                    .unwrap()
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
                        _ => None,
                    })
            })
            .collect()
    })
}

#[test]
fn a_token_kek_seals_unseals_rotates_and_never_leaves_the_token() {
    let Some(module) = MODULES.iter().copied().find(|p| Path::new(p).exists()) else {
        eprintln!(
            "SKIPPED: SoftHSM2 is not installed (`apt-get install softhsm2`; .ci/run installs \
             it), so the PKCS#11 KEK was NOT tested"
        );
        return;
    };
    let dir = kagi_node::loopback::scratch_dir("pkcs11").unwrap();
    init_token(module, &dir);
    std::env::set_var("KAGI_PKCS11_PIN", PIN);
    let p11 = Pkcs11Config {
        module: module.into(),
        token: TOKEN.into(),
        key_label: None,
        pin_file: None,
        pin_env: None,
        destroy_on_erase: false,
    };
    let mut topo =
        kagi_control::Topology::line("p", &["a", "b"], 5.0, |n| vec![format!("sae-{n}")]);
    let tune = |c: &mut NodeConfig| {
        c.store.seal.kek = KekKind::Pkcs11;
        c.store.seal.pkcs11 = Some(p11.clone());
    };
    // Provisioning the link secrets seals both stores: one token key per node.
    let cfgs = kagi_node::loopback::prepare(&dir.join("net"), &mut topo, tune).unwrap();
    let a = cfgs[0].clone();
    let mut l = labels(module);
    l.sort();
    assert_eq!(l, ["kagi-kek-a", "kagi-kek-b"]);
    // Non-extractable and sensitive: the token never hands the key out.
    with_session(module, |s| {
        let h = s
            .find_objects(&[Attribute::Label(b"kagi-kek-a".to_vec())])
            .unwrap()[0];
        let attrs = s
            .get_attributes(h, &[AttributeType::Extractable, AttributeType::Sensitive])
            .unwrap();
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        let value = s
            .get_attributes(h, &[AttributeType::Value])
            .unwrap_or_default();
        assert!(
            !value.iter().any(|a| matches!(a, Attribute::Value(_))),
            "the token gave out the KEK's value"
        );
    });
    let st = kagi_node::seal::admin::status(&a).unwrap();
    assert_eq!(st.kek_source, "pkcs11");
    assert!(
        st.store.sealed && st.store.kek_kind.as_deref() == Some("pkcs11"),
        "{st:?}"
    );
    assert!(
        st.token.as_deref().unwrap().contains("kagi-kek-a"),
        "{st:?}"
    );

    // Unseal again: the data key and the link secret come back.
    let db = a.data_dir.join("a.db");
    let seals = kagi_node::seal::node::unseal_node(&a, &db, None).unwrap();
    assert_eq!(seals.kek_kind, "pkcs11");
    assert!(seals.link_secrets.contains_key("b"));
    let v = seals.store.seal("counter", "Relay", b"7");
    drop(seals);

    // A wrong PIN is refused and says so.
    std::env::set_var("KAGI_PKCS11_PIN", "0000");
    let e = kagi_node::seal::node::unseal_node(&a, &db, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("C_Login"), "{e}");
    std::env::set_var("KAGI_PKCS11_PIN", PIN);

    // A key the token would let out is refused as a KEK.
    with_session(module, |s| {
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(b"leaky".to_vec()),
            ],
        )
        .unwrap();
    });
    let mut leaky = a.clone();
    leaky.store.seal.pkcs11.as_mut().unwrap().key_label = Some("leaky".into());
    let e = match kagi_node::seal::kek::resolve(
        &leaky.store.seal,
        &leaky.data_dir,
        "a",
        &kagi_node::store::open_db(&db, a.store.synchronous).unwrap(),
        &db,
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an extractable key was accepted as a KEK"),
    };
    assert!(e.contains("can leave the token"), "{e}");

    // A node starts on the token KEK.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            kagi_node::run_node(a.clone(), tokio::time::sleep(Duration::from_millis(300))),
        )
        .await
    });
    assert!(matches!(r, Ok(Ok(()))), "node on a token KEK: {r:?}");

    // Rotation: a new token key takes the label; the old one is kept under another label and no
    // longer opens the store.
    let r = kagi_node::seal::admin::rewrap(&a).unwrap();
    assert_eq!(r.kek, "kagi-kek-a");
    assert!(r.previous.starts_with("kagi-kek-a.old-"), "{r:?}");
    assert!(labels(module).contains(&r.previous));
    let seals = kagi_node::seal::node::unseal_node(&a, &db, None).unwrap();
    assert_eq!(&*seals.store.open("counter", "Relay", &v).unwrap(), b"7");
    drop(seals);
    let mut old = a.clone();
    old.store.seal.pkcs11.as_mut().unwrap().key_label = Some(r.previous.clone());
    let e = kagi_node::seal::node::unseal_node(&old, &db, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not unseal"), "{e}");

    // Crypto-erase: the token key goes only where the config says so.
    let b = cfgs[1].clone();
    let done = kagi_node::seal::erase::erase(
        &kagi_node::seal::erase::EraseTargets::for_node(&b),
        "erased by test",
    )
    .unwrap();
    assert!(!done.iter().any(|d| d.contains("token key")), "{done:?}");
    assert!(labels(module).contains(&"kagi-kek-b".to_string()));
    let mut a_destroy = a.clone();
    a_destroy
        .store
        .seal
        .pkcs11
        .as_mut()
        .unwrap()
        .destroy_on_erase = true;
    let done = kagi_node::seal::erase::erase(
        &kagi_node::seal::erase::EraseTargets::for_node(&a_destroy),
        "erased by test",
    )
    .unwrap();
    assert!(done.iter().any(|d| d.contains("token key")), "{done:?}");
    assert!(!labels(module).contains(&"kagi-kek-a".to_string()));
    let e = kagi_node::seal::node::unseal_node(&a, &db, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("crypto-erased"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
