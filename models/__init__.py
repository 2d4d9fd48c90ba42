"""What the loader, the workers, the CLI and the tests share about models: the signed
repository, signing and keys."""

from vigil.models.keys import KeyFileError, SigningKey, TrustedKeys, load_trusted_keys
from vigil.models.repository import RepositoryConfig, RepositoryError, VerifiedModel, load_verified
from vigil.models.signing import ModelRefused, SigningError, sign_directory, verify_directory

__all__ = [
    "KeyFileError",
    "ModelRefused",
    "RepositoryConfig",
    "RepositoryError",
    "SigningError",
    "SigningKey",
    "TrustedKeys",
    "VerifiedModel",
    "load_trusted_keys",
    "load_verified",
    "sign_directory",
    "verify_directory",
]
