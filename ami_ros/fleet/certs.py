"""TLS certificates and cell keys for a fleet, made with ``cryptography`` (which Flower already needs).

``fleet certs --out DIR --host HOST`` writes a certificate authority of the fleet's own and the
aggregator's certificate signed by it (:func:`make_certificates`); ``fleet serve --certificates
DIR`` serves over TLS with the server's three files, ``fleet join --root-certificate
DIR/ca.crt`` (the CA's certificate) connects only to a server whose certificate the CA signed
for the address it dials. The CA's key stays with whoever runs the fleet; it signs nothing else.

``fleet keys --out DIR --cell NAME`` writes a key pair per cell (:func:`make_cell_keys`) for
Flower's SuperNode authentication: ``fleet serve --cell-keys NAME.pub ...`` admits only the
cells holding those keys' private halves (``fleet join --key NAME.key``).
"""
from __future__ import annotations

import datetime
import ipaddress
import os

#: the files ``make_certificates`` writes and ``serve`` reads, in Flower's order (CA, server certificate, key)
SERVER_FILES = ("ca.crt", "server.pem", "server.key")
CA_KEY = "ca.key"
LOOPBACK = "127.0.0.1"


def make_certificates(out: str, hosts: list[str], days: int = 365) -> list[str]:
    """Write a CA (``ca.crt``, ``ca.key``) and a server certificate for ``hosts`` (IP addresses
    or DNS names, as the cells dial the server: its subject alternative names) signed by it
    (``server.pem``, ``server.key``) into ``out``; keys readable by the owner only. 127.0.0.1 is
    always among the names: ``fleet serve`` registers the cells with its SuperLink through it.
    Returns the paths written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("give at least one host (the address the cells dial, e.g. 127.0.0.1 or fleet.example.org)")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ami_ros fleet CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names = []
    for h in list(hosts) + ([] if LOOPBACK in hosts else [LOOPBACK]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    os.makedirs(out, exist_ok=True)
    pem = serialization.Encoding.PEM
    files = {"ca.crt": ca.public_bytes(pem), "server.pem": cert.public_bytes(pem)}
    for name, k in ((CA_KEY, ca_key), ("server.key", key)):
        files[name] = k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    paths = []
    for name, data in files.items():
        path = os.path.join(out, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if name.endswith(".key") else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def server_certificates(folder: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key) from ``folder``, as Flower's server takes
    them; a missing file is an error naming it."""
    out = []
    for name in SERVER_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ValueError(f"--certificates {folder}: no {name} (make them with: ami-ros fleet certs --out "
                             f"{folder} --host ADDRESS)")
        with open(path, "rb") as f:
            out.append(f.read())
    return tuple(out)


def certificate_names(pem: bytes) -> list[str]:
    """The IP addresses and DNS names a server certificate is valid for (subject alternative names)."""
    from cryptography import x509

    try:
        sans = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] + sans.get_values_for_type(x509.DNSName)


def root_certificate(path: str) -> bytes:
    """The CA certificate a cell checks the server against."""
    if not os.path.isfile(path):
        raise ValueError(f"--root-certificate {path}: no such file (the fleet's ca.crt)")
    with open(path, "rb") as f:
        data = f.read()
    if b"BEGIN CERTIFICATE" not in data:
        raise ValueError(f"--root-certificate {path}: not a PEM certificate")
    return data


def make_cell_keys(out: str, names: list[str]) -> list[str]:
    """A key pair per cell for SuperNode authentication: ``NAME.key`` (private, OpenSSH, owner
    only: stays on the cell, ``fleet join --key``) and ``NAME.pub`` (``fleet serve --cell-keys``:
    the aggregator admits only cells whose public key it was given). ECDSA P-384, as Flower's
    SuperNode authentication takes it. Returns the paths written."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    paths = []
    os.makedirs(out, exist_ok=True)
    for name in names:
        if not name or os.sep in name or name.startswith("."):
            raise ValueError(f"cell name {name!r}: give a plain name (it names the key files)")
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        for suffix, data, mode in ((".key", private, 0o600), (".pub", public + b"\n", 0o644)):
            path = os.path.join(out, name + suffix)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(path)
    return paths


def _key_file(path: str, option: str, marker: bytes, kind: str, hint: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f"{option} {path}: no such file ({hint})")
    with open(path, "rb") as f:
        if marker not in f.read(64):
            raise ValueError(f"{option} {path}: not {kind} ({hint})")
    return path


def cell_public_key(path: str) -> str:
    """Check that ``path`` is a cell's public key (OpenSSH ECDSA, as :func:`make_cell_keys` writes)."""
    return _key_file(path, "--cell-keys", b"ecdsa-sha2-", "an OpenSSH ECDSA public key",
                     "NAME.pub from ami-ros fleet keys --out DIR --cell NAME")


def cell_private_key(path: str) -> str:
    """Check that ``path`` is a cell's private key (OpenSSH, as :func:`make_cell_keys` writes)."""
    return _key_file(path, "--key", b"BEGIN OPENSSH PRIVATE KEY", "an OpenSSH private key",
                     "the cell's NAME.key from ami-ros fleet keys")
