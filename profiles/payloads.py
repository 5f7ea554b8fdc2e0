"""The typed payloads a profile can carry. Each validates what a school can get wrong before a device sees it."""

from typing import Annotated, Literal

from pydantic import AnyHttpUrl, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from mdm.validation import Input

Hostname = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.-]+$")
]
UrlPattern = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class _Payload(Input):
    model_config = ConfigDict(extra="forbid")


class WifiPayload(_Payload):
    """A Wi-Fi network: enterprise (EAP-TLS with the device's own certificate) or a pre-shared key."""

    type: Literal["wifi"]
    ssid: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    security: Literal["wpa2_enterprise", "wpa3_enterprise", "wpa2_psk", "wpa3_psk"] = "wpa2_enterprise"
    # Never returned by the API: see PayloadPublic.
    password: SecretStr | None = Field(None, min_length=8, max_length=63)
    hidden: bool = False
    auto_join: bool = True

    @model_validator(mode="after")
    def _password_matches_security(self) -> "WifiPayload":
        uses_psk = self.security.endswith("_psk")
        if uses_psk and self.password is None:
            raise ValueError("a pre-shared key network needs a password (8 to 63 characters)")
        if not uses_psk and self.password is not None:
            raise ValueError("an enterprise network uses the device's certificate, not a password")
        return self


class ProxyPayload(_Payload):
    """The web filter's proxy: a PAC file, or a host and port."""

    type: Literal["proxy"]
    pac_url: AnyHttpUrl | None = None
    host: Hostname | None = None
    port: int | None = Field(None, ge=1, le=65535)
    allow_direct_if_pac_unreachable: bool = False

    @model_validator(mode="after")
    def _pac_or_host(self) -> "ProxyPayload":
        if (self.pac_url is None) == (self.host is None):
            raise ValueError("give either pac_url, or host and port")
        if self.host is not None and self.port is None:
            raise ValueError("a proxy host needs a port")
        return self


class WebFilterPayload(_Payload):
    type: Literal["web_filter"]
    filter_adult_content: bool = True
    allowed_urls: list[UrlPattern] = Field(default_factory=list, max_length=2000)
    denied_urls: list[UrlPattern] = Field(default_factory=list, max_length=2000)


class PasscodePayload(_Payload):
    type: Literal["passcode"]
    # Cyber Essentials asks for at least six characters.
    min_length: int = Field(6, ge=4, le=16)
    max_failed_attempts: int = Field(10, ge=2, le=10)
    auto_lock_minutes: int = Field(5, ge=1, le=15)
    require_alphanumeric: bool = False


class RestrictionsPayload(_Payload):
    type: Literal["restrictions"]
    allow_camera: bool = True
    allow_screenshots: bool = True
    allow_app_installs: bool = True
    allow_explicit_content: bool = False


Payload = Annotated[
    WifiPayload | ProxyPayload | WebFilterPayload | PasscodePayload | RestrictionsPayload,
    Field(discriminator="type"),
]
# Network profiles follow the device's network access: quarantine or a policy change moves them.
# The filtering proxy is not one: safeguarding wants it on every device, on the network or off it.
NETWORK_PAYLOAD_TYPES = frozenset({"wifi"})
