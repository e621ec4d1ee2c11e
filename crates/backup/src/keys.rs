//! Encryption keys: an age passphrase (`ENCRYPT_KEY`), or age X25519 recipients for
//! writing and identity files for reading (what servers use: no passphrase to type, and
//! the stock `age -d -i key.txt` opens the archive).

use std::path::PathBuf;

use age::secrecy::SecretString;

use crate::error::{BackupError, Result};

/// What a backup is encrypted to.
#[derive(Clone, Default)]
pub struct EncryptTo {
    pub passphrase: Option<String>,
    /// `age1…` public keys.
    pub recipients: Vec<String>,
}

/// What an archive may be decrypted with.
#[derive(Clone, Default)]
pub struct DecryptWith {
    pub passphrase: Option<String>,
    pub identity_files: Vec<PathBuf>,
}

impl std::fmt::Debug for EncryptTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptTo")
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<secret>"))
            .field("recipients", &self.recipients)
            .finish()
    }
}

impl std::fmt::Debug for DecryptWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptWith")
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<secret>"))
            .field("identity_files", &self.identity_files)
            .finish()
    }
}

impl EncryptTo {
    pub fn is_set(&self) -> bool {
        self.passphrase.is_some() || !self.recipients.is_empty()
    }

    /// The manifest's word for the scheme.
    pub fn scheme(&self) -> &'static str {
        if !self.recipients.is_empty() {
            "age-x25519"
        } else {
            "age-scrypt"
        }
    }

    pub(crate) fn encryptor(&self) -> Result<age::Encryptor> {
        if !self.recipients.is_empty() {
            if self.passphrase.is_some() {
                return Err(BackupError::BadInput(
                    "give either a passphrase (ENCRYPT_KEY) or age recipients, not both".into(),
                ));
            }
            let parsed: Vec<age::x25519::Recipient> = self
                .recipients
                .iter()
                .map(|r| {
                    r.trim().parse().map_err(|e| {
                        BackupError::BadInput(format!("`{r}` is not an age recipient: {e}"))
                    })
                })
                .collect::<Result<_>>()?;
            age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| BackupError::BadInput(format!("cannot encrypt: {e}")))
        } else if let Some(p) = &self.passphrase {
            if p.is_empty() {
                return Err(BackupError::BadInput("the encryption key is empty".into()));
            }
            Ok(age::Encryptor::with_user_passphrase(SecretString::from(
                p.clone(),
            )))
        } else {
            Err(BackupError::BadInput(
                "encryption asked for but no key given: set ENCRYPT_KEY or age recipients".into(),
            ))
        }
    }
}

impl DecryptWith {
    pub(crate) fn identities(&self) -> Result<Vec<Box<dyn age::Identity>>> {
        let mut out: Vec<Box<dyn age::Identity>> = Vec::new();
        if let Some(p) = &self.passphrase {
            out.push(Box::new(age::scrypt::Identity::new(SecretString::from(
                p.clone(),
            ))));
        }
        for file in &self.identity_files {
            let ids = age::IdentityFile::from_file(file.display().to_string())
                .map_err(|e| {
                    BackupError::BadInput(format!(
                        "cannot read age identity file {}: {e}",
                        file.display()
                    ))
                })?
                .into_identities()
                .map_err(|e| {
                    BackupError::BadInput(format!(
                        "age identity file {} is not usable: {e}",
                        file.display()
                    ))
                })?;
            out.extend(ids);
        }
        Ok(out)
    }
}
