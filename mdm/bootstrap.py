"""The bootstrap: the composition root every process starts from.

The server (mdm/app.py), each `mdm` command (mdm/cli.py), the benchmarks and the tests build what they
run with here: the database, whose sessions carry the domains' hooks (mdm/hooks.py), and the keys of
the data directory. A process that skipped a step of wiring would reconcile nothing when a person
changes group; with one place that wires everything, no process can. Like mdm/app.py and mdm/cli.py,
it may import the domains.
"""

import threading
from collections.abc import Callable
from functools import cached_property

from enrollment import service as enrollment_service
from enrollment.ca import (
    CertificateAuthority,
    ProfileSigner,
    ScepKeys,
    load_or_create_ca,
    load_or_create_profile_signer,
    load_or_create_scep_keys,
)
from exit_process import flows as exit_flows
from mdm.database import Database, open_database
from mdm.hooks import Hooks
from mdm.sealing import Sealer
from mdm.settings import Settings, get_settings
from profiles import reconciler
from profiles import service as profiles_service


class Runtime:
    """One process's settings and database, and the data directory's keys.

    The keys are read (or made) when first needed, so a command that seals nothing leaves the data
    directory as it found it; the server loads them at start.
    """

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database.with_hooks(
            domain_hooks(lambda: self.sealer, lambda: self.profile_signer, lambda: self.ca.certificate_pem)
        )
        self._scep_keys: ScepKeys | None = None
        self._scep_lock = threading.Lock()

    @cached_property
    def sealer(self) -> Sealer:
        return Sealer.load_or_create(self.settings.data_dir)

    @cached_property
    def ca(self) -> CertificateAuthority:
        return load_or_create_ca(self.settings.data_dir, self.settings.ca_passphrase_value)

    @cached_property
    def profile_signer(self) -> ProfileSigner:
        return load_or_create_profile_signer(self.settings.data_dir, self.ca, self.settings.ca_passphrase_value)

    def scep_keys(self) -> ScepKeys:
        """The RSA key SCEP clients encrypt to; made at the first SCEP request (an RSA key takes a moment
        to generate, and most processes never need it), once, whichever request thread comes first."""
        with self._scep_lock:
            if self._scep_keys is None:
                self._scep_keys = load_or_create_scep_keys(
                    self.settings.data_dir, self.ca, self.settings.ca_passphrase_value
                )
            return self._scep_keys

    def close(self) -> None:
        self.database.dispose()


def domain_hooks(
    sealer: Callable[[], Sealer], profile_signer: Callable[[], ProfileSigner], ca_certificate_pem: Callable[[], str]
) -> Hooks:
    """How the domains answer the core: the reconciler, who hears a device's answer (in order), profiles'
    content, and the enrolment of Apple devices. The keys are passed lazily: read when first used."""
    return Hooks(
        reconcile=reconciler.reconcile,
        reconcile_report=reconciler.reconcile_report,
        result_listeners=(
            enrollment_service.on_command_result,
            profiles_service.on_command_result,
            exit_flows.on_command_result,  # last: it reads what the others settled
        ),
        profiles=profiles_service.DeviceProfiles(sealer, profile_signer, ca_certificate_pem),
        apple_enrolment=enrollment_service.AppleEnrolments(),
    )


def bootstrap(settings: Settings | None = None, database: Database | None = None) -> Runtime:
    """Builds a process's runtime; `database` reuses open engines (a test's), else the settings' URL is opened."""
    settings = settings or get_settings()
    return Runtime(settings, database or open_database(settings.resolved_database_url))
