"""Self-signed PKI for the local control plane: one CA, the API server's serving cert, an admin
client cert in ``system:masters`` and the service-account signing key pair."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["write_pki"]

_VALIDITY = dt.timedelta(days=3650)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool = False,
    server_sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(server_sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def write_pki(directory: Path, extra_ips: list[str] | None = None) -> dict[str, Path]:
    """Writes every file the control plane needs into ``directory`` and returns their paths.
    ``extra_ips``: more addresses of the API server's serving certificate (a node tier's node address)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(_name("local-controlplane-ca"), ca_key, None, ca_key, is_ca=True)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips or () if ip != "127.0.0.1"]
    serving_cert = _issue(_name("kube-apiserver"), serving_key, ca_cert, ca_key, server_sans=sans)

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_cert = _issue(_name("admin", "system:masters"), admin_key, ca_cert, ca_key, client=True)

    # Service-account tokens are signed with RSA (the issuer's JWKS advertises RS256).
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        "ca.key": _key_pem(ca_key),
        "apiserver.crt": serving_cert.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _key_pem(serving_key),
        "admin.crt": admin_cert.public_bytes(serialization.Encoding.PEM),
        "admin.key": _key_pem(admin_key),
        "sa.key": _key_pem(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    paths: dict[str, Path] = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        paths[name] = path
    return paths


def issue_client_cert(directory: Path, user: str, groups: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """A client certificate (PEM) and its key for ``user`` in ``groups``, from the CA in ``directory``: the
    API server authenticates it as that user, so its requests carry that name in the audit log."""
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(x509.Name(attrs), key, ca_cert, ca_key, client=True)
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
