"""TLS for a team stack on an address other machines reach: the certificate and key given with
--tls-cert / --tls-key, checked before anything starts, and the CA bundle the stack's own
calls and its clients verify it with.

The bundle (``tls-trust.pem``) is the system's CAs (certifi's, as requests uses) plus the
certificate itself: a self-signed certificate is then trusted as its own CA, and one that a
lab's CA issued verifies through the system's CAs or the chain the admin put in the file.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
from pathlib import Path

from ddpmlab.team.processes import TeamStackError


def check_pair(cert: Path | None, key: Path | None, host: str) -> dict[str, str] | None:
    """The stack's TLS settings ({"cert", "key"}: absolute paths), or None without TLS. Refuses
    (TeamStackError) one without the other, an unreadable file, a key that is not the
    certificate's, and a certificate that does not name ``host`` (clients would refuse it)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TeamStackError("--tls-cert and --tls-key go together: the certificate (PEM) and its private key (PEM)")
    cert, key = Path(cert).resolve(), Path(key).resolve()
    for what, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise TeamStackError(f"{what} {path} is not a file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise TeamStackError(f"--tls-cert {cert} and --tls-key {key} are not a certificate and its key in PEM ({e})") from e
    names = certificate_names(cert)
    if not covers(names, host):
        raise TeamStackError(
            f"the certificate {cert} names {', '.join(names) or 'nothing'} (its subjectAltName), not the stack's host "
            f"{host!r}: clients would refuse it. Make one for {host} (docs/team.md shows how)"
        )
    return {"cert": str(cert), "key": str(key)}


def certificate_names(cert: Path) -> list[str]:
    """The DNS names and IP addresses of the certificate's subjectAltName (what clients match)."""
    from cryptography import x509  # MLflow's dependency: present wherever the stack runs

    loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    try:
        alt = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*alt.get_values_for_type(x509.DNSName), *(str(a) for a in alt.get_values_for_type(x509.IPAddress))]


def covers(names: list[str], host: str) -> bool:
    """Whether a certificate naming ``names`` is valid for ``host`` (an address, or a name with
    at most a leading wildcard label, as RFC 6125 matches them)."""
    host = host.strip("[]").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for name in names:
        if address is not None:
            try:
                if ipaddress.ip_address(name) == address:
                    return True
            except ValueError:
                continue
        elif name.lower() == host or (name.startswith("*.") and host.partition(".")[2] == name[2:].lower()):
            return True
    return False


def write_trust_bundle(cert: Path, out: Path) -> Path:
    """The system's CA bundle plus ``cert`` in ``out`` (0644: public certificates only)."""
    import certifi  # requests' bundle

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n")
        f.write(Path(cert).read_bytes())
    tmp.chmod(0o644)
    tmp.replace(out)
    return out


def client_context(bundle: Path) -> ssl.SSLContext:
    """An SSL context verifying against ``bundle`` (hostname checked)."""
    return ssl.create_default_context(cafile=str(bundle))


def install_copy(source: str, target: Path, owner=None) -> None:
    """Copy a certificate or key into the services' folder (0600, owned by ``owner``): the account
    the services run as may not reach where the admin keeps the original."""
    tmp = target.with_name(f".{target.name}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(source, tmp)
    tmp.chmod(0o600)
    if owner is not None:
        os.chown(tmp, owner.uid, owner.gid)
    tmp.replace(target)

