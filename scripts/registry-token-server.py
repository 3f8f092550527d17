#!/usr/bin/python3
"""registry-token-server.py — a tiny Docker registry token issuer for loopback tests.

Usage: /usr/bin/python3 scripts/registry-token-server.py --port PORT --key-dir DIR
           --user USER --password PASS [--issuer ISSUER] [--service SERVICE]
           [--expires-in SECONDS]

Implements the token endpoint of Docker's bearer-token authentication
(https://distribution.github.io/distribution/spec/auth/token/) just far enough for
distribution 2.8's `auth: token` (docker-registry serve) and its clients:

  GET /token?service=SERVICE&scope=repository:NAME:pull[,push][&scope=...]
      with HTTP Basic auth USER:PASS  -> 200 {"token": JWT, "access_token": JWT,
                                              "expires_in": 300, "issued_at": RFC3339}
      without or with wrong credentials -> 401 (WWW-Authenticate: Basic) + JSON error
      an unknown service                -> 400
  The token grants the requested actions (pull, push; "*" as well) on every requested
  repository to the authenticated user. Other scope types (e.g. registry:catalog:*)
  are left out of the token's access list, so the registry refuses them.
  GET /healthz -> 200 "ok" (readiness probe; no credentials needed).

The JWT is what distribution 2.8 (registry/auth/token/token.go) verifies:
  header  {"typ": "JWT", "alg": "ES256", "kid": <libtrust key ID>, "x5c": [<cert, base64 DER>]}
          the registry checks the x5c certificate against its `rootcertbundle` (the
          self-signed certificate below, so the chain is just that certificate; it needs
          the digitalSignature key usage); kid would be the fallback without x5c
  claims  iss (== the registry's `issuer`), aud (== its `service`; a string, not a
          list), exp/nbf (checked with 60 s leeway), iat, sub (the user), jti,
          access [{"type": "repository", "name": NAME, "actions": [...]}]
  signature  ECDSA P-256 / SHA-256 as the raw 64-byte r||s (JWS), base64url without padding.

Key material: on first start DIR/token.key (EC P-256 private key, PEM, mode 0600) and
DIR/token.crt (self-signed certificate, PEM, valid 10 years) are created; later starts
reuse them. Point the registry's `auth.token.rootcertbundle` at DIR/token.crt.
`--init-only` creates them and exits (so a registry can be configured before this
server starts).

Listens on 127.0.0.1 only. Logs one line per request on stderr.
Needs: Python 3 and the `cryptography` package (Debian python3-cryptography); run it
with /usr/bin/python3 so Debian's package is the one imported.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import signal
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import NameOID
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"registry-token-server.py: error: the 'cryptography' package is missing ({e}); "
             "apt-get install -y python3-cryptography and run with /usr/bin/python3")

PROG = "registry-token-server.py"
KNOWN_ACTIONS = {"pull", "push", "delete", "*"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key) -> str:
    """docker/libtrust's key ID: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits,
    base32 without padding, in 4-character groups joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    s = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(s[i:i + 4] for i in range(0, len(s), 4))


def load_or_create_keys(key_dir: str, issuer: str):
    """Returns (private key, certificate), creating both on first use."""
    os.makedirs(key_dir, exist_ok=True)
    key_path = os.path.join(key_dir, "token.key")
    crt_path = os.path.join(key_dir, "token.crt")
    if os.path.exists(key_path) and os.path.exists(crt_path):
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(crt_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        if (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
                and cert.public_key().public_numbers() == key.public_key().public_numbers()):
            return key, cert
        print(f"{PROG}: {key_path} / {crt_path} do not match (or are not P-256); regenerating",
              file=sys.stderr)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{issuer} token signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        # Self-signed: it is both the registry's trusted root and the token's x5c leaf.
        # Go's x509 accepts a leaf that is itself in the root pool; distribution also
        # insists on the digitalSignature key usage.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Write to temporary names first so a concurrent reader never sees half a file.
    tmp_key, tmp_crt = key_path + ".tmp", crt_path + ".tmp"
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(tmp_crt, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_key, key_path)
    os.replace(tmp_crt, crt_path)
    print(f"{PROG}: created signing key {key_path} and certificate {crt_path}", file=sys.stderr)
    return key, cert


def parse_scopes(values):
    """scope=repository:NAME:ACTIONS (possibly repeated, or space-separated) ->
    [(name, [actions])]. NAME may contain ':' only as a host:port prefix, so the
    actions are what follows the last ':'."""
    out = {}
    for value in values:
        for scope in value.split():
            parts = scope.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue  # registry:catalog:* and the like: not granted
            name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
            granted = out.setdefault(name, [])
            for a in actions:
                if a in KNOWN_ACTIONS and a not in granted:
                    granted.append(a)
    return [(n, a) for n, a in out.items() if a]


class TokenIssuer:
    def __init__(self, key, cert, issuer, service, user, password, expires_in):
        self.key, self.issuer, self.service = key, issuer, service
        self.user, self.password, self.expires_in = user, password, expires_in
        self.header = {
            "typ": "JWT",
            "alg": "ES256",
            "kid": libtrust_key_id(key.public_key()),
            "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")],
        }

    def check(self, authorization):
        """The user name if the Basic credentials match, else None."""
        if not authorization or not authorization.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(authorization[6:].strip(), validate=True) \
                .decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return user if user_ok and password_ok else None

    def issue(self, subject, scopes):
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        ts = int(now.timestamp())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": ts + self.expires_in,
            "nbf": ts - 1,
            "iat": ts,
            "jti": uuid.uuid4().hex,
            "access": [{"type": "repository", "name": n, "actions": a} for n, a in scopes],
        }
        signing_input = b64url(json.dumps(self.header, separators=(",", ":")).encode()) + "." + \
            b64url(json.dumps(claims, separators=(",", ":")).encode())
        der = self.key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        token = signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return token, now


class Handler(BaseHTTPRequestHandler):
    server_version = "lm-token-server/1"
    issuer: TokenIssuer = None  # set before serving

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.log_date_time_string()} {self.address_string()} {fmt % args}\n")

    def reply(self, status, body, extra_headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message, extra_headers=()):
        self.reply(status, {"errors": [{"code": code, "message": message}]}, extra_headers)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self.reply(200, "ok")
            return
        if url.path != "/token":
            self.error(404, "NOT_FOUND", f"no such endpoint: {url.path}")
            return
        query = parse_qs(url.query, keep_blank_values=True)
        service = (query.get("service") or [""])[0]
        if service and service != self.issuer.service:
            self.error(400, "INVALID_SERVICE", f"this issuer serves {self.issuer.service!r}, not {service!r}")
            return
        subject = self.issuer.check(self.headers.get("Authorization"))
        if subject is None:
            self.error(401, "UNAUTHORIZED",
                       "authentication required" if not self.headers.get("Authorization")
                       else "invalid username or password",
                       [("WWW-Authenticate", 'Basic realm="lm-token-server"')])
            return
        scopes = parse_scopes(query.get("scope", []))
        token, now = self.issuer.issue(subject, scopes)
        self.log_message("issued token to %r for %s", subject,
                         " ".join(f"{n}:{','.join(a)}" for n, a in scopes) or "(no scope)")
        self.reply(200, {
            "token": token,
            "access_token": token,
            "expires_in": self.issuer.expires_in,
            "issued_at": now.isoformat().replace("+00:00", "Z"),
        })


def main():
    p = argparse.ArgumentParser(prog=PROG, description="Docker registry token issuer for loopback tests.")
    p.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    p.add_argument("--key-dir", required=True, help="directory for token.key and token.crt")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--issuer", default="lm-test-issuer")
    p.add_argument("--service", default="lm-token-registry")
    p.add_argument("--expires-in", type=int, default=300, help="token lifetime in seconds (300)")
    p.add_argument("--init-only", action="store_true", help="create the key and certificate, then exit")
    args = p.parse_args()

    key, cert = load_or_create_keys(args.key_dir, args.issuer)
    if args.init_only:
        return
    Handler.issuer = TokenIssuer(key, cert, args.issuer, args.service, args.user, args.password,
                                 args.expires_in)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"{PROG}: listening on 127.0.0.1:{args.port} (issuer {args.issuer}, service {args.service}, "
          f"user {args.user})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def on_sigterm(_signum, _frame):
    raise KeyboardInterrupt  # leave serve_forever() and close the socket


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    main()
