"""A small certificate authority for the TLS tests (plain module: ``from tls_certs import ...``).

    ca = make_ca(tmp_path)                                        # ca.cert, ca.key (PEM)
    cert, key = issue(ca, tmp_path, "server")                     # SAN 127.0.0.1, ::1, localhost
    cert, key = issue(ca, tmp_path, "client", ["wirestream"], client=True)
    cert, key = self_signed(tmp_path, "rogue")                    # trusted by nobody

Every file is PEM: certificates as ``NAME.crt``, keys as unencrypted PKCS#8 ``NAME.key``
(mode 0600), the form that OpenSSL (Python's ``ssl``, librdkafka), GnuTLS (rsyslog's gtls
driver) and Java's PEM keystores (Apache Kafka's ``ssl.keystore.type=PEM``) all read.
RSA 2048: every TLS stack here takes it. Made with the ``cryptography`` package (in the
venv through confluent-kafka's schema-registry extra), else with the ``openssl`` command.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: what a server certificate names unless told otherwise: every way a test reaches loopback
LOOPBACK_SANS = ("127.0.0.1", "::1", "localhost")
VALID_DAYS = 2


@dataclass(frozen=True)
class CA:
    """A certificate authority: its certificate (what a peer is given to verify with) and key."""

    cert: Path
    key: Path
    name: str


def make_ca(directory: str | os.PathLike[str], name: str = "wirestream test CA") -> CA:
    """A new CA in ``directory`` (``ca.crt``, ``ca.key``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "ca.crt", d / "ca.key"
    if _crypto():
        _crypto_cert(cert, key, name, sans=(), issuer=None, kind="ca", client=False)
    else:
        _openssl_cert(cert, key, name, sans=(), issuer=None, kind="ca", client=False)
    return CA(cert, key, name)


def issue(ca: CA, directory: str | os.PathLike[str], name: str, sans: Sequence[str] = LOOPBACK_SANS,
          client: bool = False) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by ``ca``: ``(NAME.crt, NAME.key)`` in ``directory``.

    ``sans``: the subject alternative names (IP addresses or DNS names) a client's hostname
    check accepts. A server certificate (``client=False``) may be used for both ends
    (``serverAuth`` and ``clientAuth``), since a Kafka broker is also a client of the other
    brokers with the same certificate; a client certificate has ``clientAuth`` only."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    if _crypto():
        _crypto_cert(cert, key, name, sans, issuer=ca, kind="leaf", client=client)
    else:
        _openssl_cert(cert, key, name, sans, issuer=ca, kind="leaf", client=client)
    return cert, key


def self_signed(directory: str | os.PathLike[str], name: str,
                sans: Sequence[str] = LOOPBACK_SANS) -> tuple[Path, Path]:
    """A self-signed server certificate for ``name`` (its own CA: trusted only if given as one)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    if _crypto():
        _crypto_cert(cert, key, name, sans, issuer=None, kind="self", client=False)
    else:
        _openssl_cert(cert, key, name, sans, issuer=None, kind="self", client=False)
    return cert, key


# --- with the cryptography package ------------------------------------------------------------


def _crypto() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if not shutil.which("openssl"):
            raise RuntimeError("tests/tls_certs.py needs the cryptography package or the openssl command") from None
        return False
    return True


def _crypto_cert(cert_path: Path, key_path: Path, name: str, sans: Sequence[str], issuer: CA | None,
                 kind: str, client: bool) -> None:
    """``kind``: ``ca`` (signs others), ``leaf`` (signed by ``issuer``) or ``self`` (a
    self-signed server certificate, which is its own CA: CA:TRUE so that every TLS stack
    accepts it as a trust anchor when it is given as the CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if issuer is None:
        signing_key, issuer_name = key, subject
    else:
        signing_key = serialization.load_pem_private_key(issuer.key.read_bytes(), password=None)
        issuer_name = x509.load_pem_x509_certificate(issuer.cert.read_bytes()).subject
    now = datetime.datetime.now(datetime.UTC)
    signs = kind in ("ca", "self")
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little apart
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=signs, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, key_encipherment=kind != "ca", key_cert_sign=signs, crl_sign=signs,
                   content_commitment=False, data_encipherment=False, key_agreement=False,
                   encipher_only=False, decipher_only=False), critical=True))
    if kind != "ca":
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH,
                                                                   ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
    if issuer is not None:
        issuer_cert = x509.load_pem_x509_certificate(issuer.cert.read_bytes())
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_cert.public_key()), critical=False)
    cert = builder.sign(signing_key, hashes.SHA256())
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _san(value: str):  # -> x509.GeneralName
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


# --- with the openssl command -----------------------------------------------------------------


def _openssl_cert(cert_path: Path, key_path: Path, name: str, sans: Sequence[str], issuer: CA | None,
                  kind: str, client: bool) -> None:
    """As :func:`_crypto_cert`, with the ``openssl`` command."""
    signs = kind in ("ca", "self")
    lines = ["subjectKeyIdentifier=hash", f"basicConstraints=critical,CA:{'TRUE' if signs else 'FALSE'}",
             "keyUsage=critical,digitalSignature" + (",keyEncipherment" if kind != "ca" else "")
             + (",keyCertSign,cRLSign" if signs else "")]
    if kind != "ca":
        lines.append("extendedKeyUsage=" + ("clientAuth" if client else "serverAuth,clientAuth"))
    if sans:
        names = []
        for s in sans:
            try:
                ipaddress.ip_address(s)
                names.append(f"IP:{s}")
            except ValueError:
                names.append(f"DNS:{s}")
        lines.append("subjectAltName=" + ",".join(names))
    ext, csr = cert_path.with_suffix(".ext"), cert_path.with_suffix(".csr")
    ext.write_text("\n".join(lines) + "\n")
    old = os.umask(0o077)  # the key is never readable by others, not even for a moment
    try:
        _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key_path)])
    finally:
        os.umask(old)
    _run(["openssl", "req", "-new", "-key", str(key_path), "-subj", f"/CN={name}", "-out", str(csr)])
    signer = ["-signkey", str(key_path)] if issuer is None else ["-CA", str(issuer.cert), "-CAkey", str(issuer.key),
                                                                  "-CAcreateserial"]
    _run(["openssl", "x509", "-req", "-in", str(csr), *signer, "-days", str(VALID_DAYS), "-sha256",
          "-extfile", str(ext), "-out", str(cert_path)])
    csr.unlink()
    ext.unlink()


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {proc.stderr.strip()}")
