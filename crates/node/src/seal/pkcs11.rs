//! A key-encryption key that never leaves a PKCS#11 token (an HSM, a smart card, SoftHSM2 in
//! tests): a non-extractable, sensitive AES-256 key on the token wraps each database's data key
//! with AES-GCM computed by the token. The node holds only a handle to it, and only while it
//! unseals: whoever copies the disk (key file or not) gets nothing without the token and its PIN.
//!
//! The token is found by its label, the key by its label (`kagi-kek-<node>` by default), the PIN
//! comes from a 0600 file or the environment. A key the token would let out (extractable or not
//! sensitive) is refused.

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::kek::KekError;

/// Environment variable read for the token PIN when the config names no PIN file.
pub const DEFAULT_PIN_ENV: &str = "KAGI_PKCS11_PIN";
const IV_LEN: usize = 12;

/// `[store.seal.pkcs11]` in `node.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The token's PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The KEK's label on the token (default `kagi-kek-<node>`; created on a new store's first
    /// start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_label: Option<String>,
    /// A file (mode 0600) holding the user PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN when there is no `pin_file` (default
    /// `KAGI_PKCS11_PIN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
    /// Whether a crypto-erase (`POST /api/v1/erase`) also destroys the KEK on the token
    /// (default `false`: the token's keys are the token owner's to destroy; the erase already
    /// removes every data key it wrapped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub destroy_on_erase: bool,
}

impl Pkcs11Config {
    /// The KEK's label for node `node_id`.
    pub fn key_label(&self, node_id: &str) -> String {
        self.key_label
            .clone()
            .unwrap_or_else(|| format!("kagi-kek-{node_id}"))
    }
}

/// A logged-in session on the token and the handle of the KEK on it.
pub struct TokenKek {
    session: Session,
    key: ObjectHandle,
    /// The key's label.
    pub label: String,
    ctx: Pkcs11,
    slot: Slot,
}

fn err(what: &str) -> impl Fn(cryptoki::error::Error) -> KekError + '_ {
    move |e| KekError::Pkcs11(format!("{what}: {e}"))
}

fn pin(cfg: &Pkcs11Config) -> Result<AuthPin, KekError> {
    if let Some(p) = &cfg.pin_file {
        super::kek::check_permissions(p)?;
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(p).map_err(|e| KekError::Io {
                path: p.display().to_string(),
                err: e,
            })?);
        return Ok(AuthPin::from(
            text.trim_end_matches(['\r', '\n']).to_string(),
        ));
    }
    let var = cfg
        .pin_env
        .clone()
        .unwrap_or_else(|| DEFAULT_PIN_ENV.to_string());
    std::env::var(&var)
        .map(AuthPin::from)
        .map_err(|_| KekError::NoPin(var))
}

/// A logged-in read-write session on the token `cfg` names.
fn session(cfg: &Pkcs11Config) -> Result<(Pkcs11, Slot, Session), KekError> {
    let ctx = Pkcs11::new(&cfg.module).map_err(|e| {
        KekError::Pkcs11(format!("cannot load module {}: {e}", cfg.module.display()))
    })?;
    // The module stays initialized while it is loaded (this process may have opened it before).
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => return Err(err("C_Initialize")(e)),
    }
    let mut found = None;
    for slot in ctx.get_slots_with_token().map_err(err("C_GetSlotList"))? {
        let info = ctx.get_token_info(slot).map_err(err("C_GetTokenInfo"))?;
        if info.label().trim_end() == cfg.token {
            found = Some(slot);
            break;
        }
    }
    let slot = found.ok_or_else(|| {
        KekError::Pkcs11(format!(
            "no token labelled {:?} in {}",
            cfg.token,
            cfg.module.display()
        ))
    })?;
    let session = ctx.open_rw_session(slot).map_err(err("C_OpenSession"))?;
    session
        .login(UserType::User, Some(&pin(cfg)?))
        .map_err(err("C_Login (wrong PIN?)"))?;
    Ok((ctx, slot, session))
}

fn find(session: &Session, label: &str) -> Result<Option<ObjectHandle>, KekError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(err("C_FindObjects"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(KekError::Pkcs11(format!(
            "{} keys labelled {label:?} on the token; keep one",
            found.len()
        ))),
    }
}

fn generate(session: &Session, label: &str) -> Result<ObjectHandle, KekError> {
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .map_err(err("C_GenerateKey"))
}

/// Refuses a key whose bytes the token would hand out.
fn check_sealed_in(session: &Session, key: ObjectHandle, label: &str) -> Result<(), KekError> {
    let attrs = session
        .get_attributes(key, &[AttributeType::Extractable, AttributeType::Sensitive])
        .map_err(err("C_GetAttributeValue"))?;
    let mut extractable = true;
    let mut sensitive = false;
    for a in attrs {
        match a {
            Attribute::Extractable(v) => extractable = v,
            Attribute::Sensitive(v) => sensitive = v,
            _ => {}
        }
    }
    if extractable || !sensitive {
        return Err(KekError::Pkcs11(format!(
            "key {label:?} can leave the token (extractable: {extractable}, sensitive: \
             {sensitive}); a KEK must be non-extractable and sensitive"
        )));
    }
    Ok(())
}

impl TokenKek {
    /// Opens the KEK labelled for `node_id` on the token; when it is missing and `create` is set,
    /// generates it on the token. Returns whether it was created.
    ///
    /// # Errors
    /// Module, token, PIN or key problems, each named.
    pub fn open(cfg: &Pkcs11Config, node_id: &str, create: bool) -> Result<(Self, bool), KekError> {
        Self::open_label(cfg, &cfg.key_label(node_id), create)
    }

    fn open_label(cfg: &Pkcs11Config, label: &str, create: bool) -> Result<(Self, bool), KekError> {
        let (ctx, slot, session) = session(cfg)?;
        let (key, fresh) = match find(&session, label)? {
            Some(k) => (k, false),
            None if create => (generate(&session, label)?, true),
            None => {
                return Err(KekError::Pkcs11(format!(
                    "no key labelled {label:?} on token {:?}: the store is sealed under it; \
                     restore the token (or the store cannot be opened)",
                    cfg.token
                )))
            }
        };
        check_sealed_in(&session, key, label)?;
        Ok((
            Self {
                session,
                key,
                label: label.to_string(),
                ctx,
                slot,
            },
            fresh,
        ))
    }

    /// A new KEK on the same token for a rotation, labelled `<label>.new` until
    /// [`Self::promote`].
    ///
    /// # Errors
    /// A key with that label exists already (an unfinished rotation), or the token fails.
    pub fn create_next(&self) -> Result<Self, KekError> {
        let label = format!("{}.new", self.label);
        // Same module context and token (one C_Initialize per process); the login holds for
        // every session of the application.
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(err("C_OpenSession"))?;
        if find(&session, &label)?.is_some() {
            return Err(KekError::Pkcs11(format!(
                "a key labelled {label:?} exists (an earlier rotation did not finish): check \
                 which key unseals the store with `kagi seal status`, delete the other"
            )));
        }
        let key = generate(&session, &label)?;
        Ok(Self {
            session,
            key,
            label,
            ctx: self.ctx.clone(),
            slot: self.slot,
        })
    }

    /// Renames this key to `label` on the token.
    ///
    /// # Errors
    /// The token refuses.
    pub fn relabel(&mut self, label: &str) -> Result<(), KekError> {
        self.session
            .update_attributes(self.key, &[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(err("C_SetAttributeValue"))?;
        self.label = label.to_string();
        Ok(())
    }

    /// Destroys the key labelled `label` on the token `cfg` names (crypto-erase). A key that is
    /// not there counts as destroyed.
    ///
    /// # Errors
    /// The module, token or PIN fails, or the token refuses to destroy the key.
    pub fn destroy(cfg: &Pkcs11Config, label: &str) -> Result<(), KekError> {
        let (_ctx, _slot, session) = session(cfg)?;
        if let Some(key) = find(&session, label)? {
            session
                .destroy_object(key)
                .map_err(err("C_DestroyObject"))?;
        }
        Ok(())
    }

    /// AES-256-GCM encryption on the token: `iv ‖ ciphertext ‖ tag`.
    ///
    /// # Errors
    /// The token fails.
    pub fn encrypt(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut iv = [0u8; IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, aad, 128.into()).map_err(err("GCM"))?;
        let ct = self
            .session
            .encrypt(&Mechanism::AesGcm(params), self.key, plain)
            .map_err(err("C_Encrypt"))?;
        let mut out = Vec::with_capacity(IV_LEN + ct.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`Self::encrypt`] made; `None` when it fails authentication.
    pub fn decrypt(&self, aad: &[u8], sealed: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        if sealed.len() < IV_LEN + 16 {
            return None;
        }
        let (iv, ct) = sealed.split_at(IV_LEN);
        let mut iv = <[u8; IV_LEN]>::try_from(iv).ok()?;
        let params = GcmParams::new(&mut iv, aad, 128.into()).ok()?;
        self.session
            .decrypt(&Mechanism::AesGcm(params), self.key, ct)
            .ok()
            .map(zeroize::Zeroizing::new)
    }
}
