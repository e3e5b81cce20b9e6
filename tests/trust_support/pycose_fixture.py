# Makes the PYCOSE_ENVELOPE fixture of src/trust/notation.rs: a Notary Project COSE envelope signed by
# pycose, with a chain made by `cryptography` (not regate code, not openssl). pip install pycose;
# prints the envelope (hex) and the root (PEM), the target digest on stderr.
import datetime, json, hashlib, sys
import cbor2
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.messages import Sign1Message
from pycose.headers import Algorithm, Critical, ContentType, X5chain
from pycose.algorithms import Es256
from pycose.keys import EC2Key

nb = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
na = datetime.datetime(2036, 1, 1, tzinfo=datetime.timezone.utc)
rk = ec.generate_private_key(ec.SECP256R1())
lk = ec.generate_private_key(ec.SECP256R1())
rn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pycose root")])
ln = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pycose signer")])
root = (x509.CertificateBuilder().subject_name(rn).issuer_name(rn).public_key(rk.public_key())
        .serial_number(1).not_valid_before(nb).not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(rk, hashes.SHA256()))
leaf = (x509.CertificateBuilder().subject_name(ln).issuer_name(rn).public_key(lk.public_key())
        .serial_number(2).not_valid_before(nb).not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(rk, hashes.SHA256()))
target = "sha256:" + hashlib.sha256(b"pycose fixture").hexdigest()
payload = json.dumps({"targetArtifact": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                         "digest": target, "size": 14}}).encode()
nums = lk.private_numbers()
key = EC2Key(crv="P_256", d=nums.private_value.to_bytes(32, "big"))
msg = Sign1Message(
    phdr={Algorithm: Es256, Critical: ["io.cncf.notary.signingScheme"],
          ContentType: "application/vnd.cncf.notary.payload.v1+json",
          "io.cncf.notary.signingScheme": "notary.x509",
          "io.cncf.notary.signingTime": cbor2.CBORTag(1, 1780000000)},
    uhdr={X5chain: [leaf.public_bytes(serialization.Encoding.DER), root.public_bytes(serialization.Encoding.DER)],
          "io.cncf.notary.signingAgent": "pycose"},
    payload=payload)
msg.key = key
env = msg.encode(tag=True)
print(env.hex())
print(root.public_bytes(serialization.Encoding.PEM).decode(), end="")
print(target, file=sys.stderr)
