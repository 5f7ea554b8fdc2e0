"""Which keys a device identity may have: one rule for the CA that certifies them and every protocol adapter."""

from cryptography.hazmat.primitives.asymmetric import rsa

# RSA keys a device may use: 2048 bits or more (NIST SP 800-57), and the exponent 65537, because e=3
# invites low-exponent attacks such as Bleichenbacher's PKCS#1 v1.5 signature forgery.
MIN_RSA_BITS = 2048
RSA_EXPONENT = 65537


def weak_rsa_reason(key: rsa.RSAPublicKey) -> str | None:
    """Why an RSA key is too weak for a device identity, or None."""
    if key.key_size < MIN_RSA_BITS:
        return f"RSA key is {key.key_size} bits; at least {MIN_RSA_BITS} bits are required"
    exponent = key.public_numbers().e
    if exponent != RSA_EXPONENT:
        return f"RSA key's public exponent is {exponent}; only {RSA_EXPONENT} is accepted"
    return None
