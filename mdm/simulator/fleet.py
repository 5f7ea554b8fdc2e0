"""The simulated school's devices: which kinds, in what proportions, with what on them, and how they drift.

A plan is a pure function of the number of devices and a seed, so a test can tell which devices will
drift before it runs them, and two runs with the same options load a server the same way. The mix
follows a secondary school under the mobile technologies policy (mdm.categories): school iPads given
to learners, shared iPad carts, family-bought iPads on the school scheme (authorised), learners' and
staff's own phones. Spreading each kind evenly along the plan keeps a fleet of ten a real mix too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from mdm.agent.inventory import App, Inventory
from mdm.categories import PERSONAL, Category, Platform

Drift = Literal["removed_school_app", "removed_proxy", "old_os", "no_passcode"]
DRIFTS: tuple[Drift, ...] = ("removed_school_app", "removed_proxy", "old_os", "no_passcode")
# These are in the device's starting inventory; the others undo what the school installs, once it has.
STARTS_DRIFTED = frozenset({"old_os", "no_passcode"})
DEFAULT_DRIFT_PERCENT = 15
DEFAULT_SEED = 2026
# About 60 apps on each device: these from the family or the vendor, plus what the school installs.
OWN_APPS_PER_DEVICE = 56
# Payload types that filter the web: removing the profile that carries one is the drift that matters.
FILTER_PAYLOADS = frozenset({"proxy", "web_filter"})


@dataclass(frozen=True)
class DeviceKind:
    label: str
    category: Category
    platforms: tuple[Platform, ...]
    model: str
    # Whose device it is: a learner's, a member of staff's, or nobody's (a shared cart).
    owner: Literal["learner", "staff"] | None


KINDS = {
    "ipad": DeviceKind(
        "school iPad", Category.school_single_user, (Platform.ipados,), "iPad (10th generation)", "learner"
    ),
    "cart": DeviceKind("shared cart iPad", Category.school_shared, (Platform.ipados,), "iPad (9th generation)", None),
    "scheme": DeviceKind(
        "authorised iPad", Category.authorised, (Platform.ipados,), "iPad Air (5th generation)", "learner"
    ),
    "learner": DeviceKind(
        "learner's phone", Category.learner_owned, (Platform.ios, Platform.android), "Phone", "learner"
    ),
    "staff": DeviceKind("staff phone", Category.staff_owned, (Platform.ios, Platform.android), "Phone", "staff"),
}
# Twenty slots, interleaved so that any prefix of the plan is close to the whole mix:
# 25% school iPads, 15% carts, 25% authorised, 25% learners' phones, 10% staff phones.
_PATTERN = [
    "ipad",
    "scheme",
    "learner",
    "cart",
    "ipad",
    "scheme",
    "learner",
    "staff",
    "ipad",
    "scheme",
    "learner",
    "cart",
    "ipad",
    "scheme",
    "learner",
    "cart",
    "ipad",
    "scheme",
    "learner",
    "staff",
]

CURRENT_OS = {Platform.ipados: "17.5.1", Platform.ios: "17.5.1", Platform.android: "14"}
# Below the oldest version each vendor still supports (the os_supported rule), when the server knows it.
OLD_OS = {Platform.ipados: "15.7.9", Platform.ios: "15.7.9", Platform.android: "11"}

_OWN_APPS = [
    "com.apple.mobilesafari",
    "com.apple.camera",
    "com.apple.mobilemail",
    "com.apple.Maps",
    "com.apple.Music",
    "com.apple.podcasts",
    "com.apple.news",
    "com.apple.weather",
    "com.apple.calculator",
    "com.apple.mobilenotes",
    "com.apple.reminders",
    "com.apple.mobilecal",
    "com.apple.facetime",
    "com.apple.Photos",
    "com.apple.Health",
    "com.apple.iBooks",
    "com.apple.tips",
    "com.apple.shortcuts",
    "com.apple.Translate",
    "com.apple.measure",
    "com.google.chrome.ios",
    "com.google.Maps",
    "com.google.photos",
    "com.google.Docs",
    "com.google.Drive",
    "com.google.Classroom",
    "com.google.youtube",
    "com.google.Gmail",
    "com.microsoft.Office.Word",
    "com.microsoft.Office.Excel",
    "com.microsoft.Office.Powerpoint",
    "com.microsoft.skype.teams",
    "com.microsoft.onenote",
    "com.spotify.client",
    "com.netflix.Netflix",
    "com.bbc.iplayer",
    "com.bbc.sounds",
    "com.bbc.bitesize",
    "com.duolingo.DuolingoMobile",
    "com.quizlet.quizletapp",
    "com.khanacademy.Khan",
    "com.toyopagroup.picaboo",
    "com.zhiliaoapp.musically",
    "com.burbn.instagram",
    "net.whatsapp.WhatsApp",
    "com.facebook.Messenger",
    "com.pinterest",
    "com.roblox.robloxmobile",
    "com.mojang.minecraftpe",
    "com.supercell.magic",
    "com.king.candycrushsaga",
    "com.innersloth.amongus",
    "com.tinyspeck.chatlyio",
    "com.zoom.videomeetings",
    "com.adobe.Adobe-Reader",
    "com.dropbox.Dropbox",
    "com.shazam.Shazam",
    "com.ubercab.UberClient",
    "com.deliveroo.orderapp",
    "com.trainline.Trainline",
    "uk.co.tfl.go",
    "uk.nhs.nhsapp",
    "com.monzo.app",
    "com.starlingbank.app",
    "com.canva.canvaeditor",
    "com.grammarly.keyboard",
    "com.goodnotesapp.x",
    "com.notability.ios",
    "com.apple.iMovie",
    "com.apple.mobilegarageband",
    "com.apple.Pages",
    "com.apple.Numbers",
    "com.apple.Keynote",
]


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: what it is, how it will drift, and how it enrols."""

    index: int
    serial: str
    kind: str
    category: Category
    platform: Platform
    model: str
    drift: Drift | None = None
    # Set by whoever provides the enrolment tokens: a shared token per category or one per person.
    token: str | None = None
    person_id: str | None = None

    @property
    def owner(self) -> Literal["learner", "staff"] | None:
        return KINDS[self.kind].owner

    @property
    def accepts_aup(self) -> bool:
        """The user of a personal device accepts the acceptable use policy when enrolling, as the policy asks."""
        return self.category in PERSONAL


def plan_fleet(
    devices: int,
    *,
    seed: int = DEFAULT_SEED,
    drift_percent: float = DEFAULT_DRIFT_PERCENT,
    categories: frozenset[Category] | None = None,
) -> list[DeviceSpec]:
    """`devices` devices in the school's mix (only `categories`, when given), a share of them drifting."""
    pattern = [kind for kind in _PATTERN if categories is None or KINDS[kind].category in categories]
    if not pattern:
        raise ValueError("none of the simulated kinds of device is in the categories given")
    rng = random.Random(seed)
    drifting = _drifting_indexes(devices, drift_percent)
    plan = []
    for index in range(devices):
        kind = KINDS[pattern[index % len(pattern)]]
        drift = DRIFTS[drifting[index] % len(DRIFTS)] if index in drifting else None
        plan.append(
            DeviceSpec(
                index=index,
                serial=f"SIM{seed % 1000:03d}{index:06d}",
                kind=pattern[index % len(pattern)],
                category=kind.category,
                platform=rng.choice(kind.platforms),
                model=kind.model,
                drift=drift,
            )
        )
    return plan


def _drifting_indexes(devices: int, percent: float) -> dict[int, int]:
    """Evenly spread devices that drift, each with its rank among them (which picks its kind of drift)."""
    count = round(devices * max(0.0, min(percent, 100.0)) / 100)
    if count == 0:
        return {}
    step = devices / count
    # The middle of each stretch, so the first devices of a small plan are not all drifting ones.
    return {int(step * rank + step / 2): rank for rank in range(count)}


def starting_inventory(spec: DeviceSpec, seed: int = DEFAULT_SEED) -> Inventory:
    """What the device has before the school manages anything: its own apps, a passcode, its OS."""
    rng = random.Random(f"{seed}:{spec.serial}")
    apps = [
        App(identifier, f"{rng.randint(1, 9)}.{rng.randint(0, 20)}", managed=False)
        for identifier in sorted(rng.sample(_OWN_APPS, OWN_APPS_PER_DEVICE))
    ]
    inventory = Inventory(
        os_version=CURRENT_OS[spec.platform],
        build="21F90" if spec.platform != Platform.android else "UP1A.231005.007",
        passcode_set=True,
        encrypted=True,
        apps=apps,
    )
    apply_drift(inventory, spec)
    return inventory


def apply_drift(inventory: Inventory, spec: DeviceSpec) -> bool:
    """The device's user undoes what the school set up (every time: a learner who keeps deleting the app).

    True when the inventory changed. Run after each round's commands, so the next check-in reports it.
    """
    if spec.drift == "no_passcode":
        changed = inventory.passcode_set
        inventory.passcode_set = False
        return changed
    if spec.drift == "old_os":
        changed = inventory.os_version != OLD_OS[spec.platform]
        inventory.os_version = OLD_OS[spec.platform]
        return changed
    if spec.drift == "removed_school_app":
        managed = sorted(app.identifier for app in inventory.apps if app.managed)
        return bool(managed) and inventory.remove_app(managed[0])
    if spec.drift == "removed_proxy":
        before = len(inventory.profiles)
        inventory.profiles = [profile for profile in inventory.profiles if not _filters_the_web(profile.payloads)]
        return len(inventory.profiles) != before
    return False


def _filters_the_web(payloads: object) -> bool:
    return isinstance(payloads, list) and any(
        isinstance(payload, dict) and payload.get("type") in FILTER_PAYLOADS for payload in payloads
    )
