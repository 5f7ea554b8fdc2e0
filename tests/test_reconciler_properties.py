"""Property-based tests of the reconciler's decision, applied by the reference agent's device model.

For random catalogues, devices and reported states: the commands, once acknowledged by the agent,
converge the device in one round; no command ever targets an app the school did not install; and
planning again while the commands are still open queues nothing new.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from mdm.agent import App, Inventory, Profile
from profiles.planning import (
    AppSpec,
    DeviceFacts,
    ProfileSpec,
    Reported,
    ReportedApp,
    app_reasons,
    meets_minimum,
    plan_device,
    profile_reasons,
)

CATEGORIES = ["school_single_user", "school_shared", "authorised", "learner_owned"]
GROUPS = ["Year 7", "Year 8", "Year 9", "9X1"]
ACCESS = ["full", "internet_only", "none"]
APP_IDS = [f"com.school.app{i}" for i in range(5)]
PROFILE_IDS = [f"uk.sch.profile{i}" for i in range(5)]

subsets = st.frozensets
versions = st.sampled_from(["1.0", "2.0", "2.1", "3.0"])


@st.composite
def profile_specs(draw):  # type: ignore[no-untyped-def]
    identifiers = draw(st.lists(st.sampled_from(PROFILE_IDS), unique=True, max_size=5))
    return [
        ProfileSpec(
            id=f"p-{identifier}",
            identifier=identifier,
            version=draw(st.integers(1, 4)),
            is_network=draw(st.booleans()),
            categories=draw(st.just(frozenset()) | subsets(st.sampled_from(CATEGORIES), max_size=2)),
            groups=draw(st.just(frozenset()) | subsets(st.sampled_from(GROUPS), max_size=2)),
            network_access=draw(subsets(st.sampled_from(["full", "internet_only"]), max_size=1)),
        )
        for identifier in identifiers
    ]


@st.composite
def app_specs(draw):  # type: ignore[no-untyped-def]
    identifiers = draw(st.lists(st.sampled_from(APP_IDS), unique=True, max_size=5))
    return [
        AppSpec(
            id=f"a-{identifier}",
            identifier=identifier,
            platform=draw(st.sampled_from(["ios", "ios", "android"])),
            licensed=False,
            min_version=draw(st.none() | versions),
            # Often required of every category, so most worlds have apps the device must carry.
            categories=draw(st.just(frozenset(CATEGORIES)) | subsets(st.sampled_from(CATEGORIES), max_size=2)),
            groups=draw(subsets(st.sampled_from(GROUPS), max_size=1)),
        )
        for identifier in identifiers
    ]


@st.composite
def worlds(draw):  # type: ignore[no-untyped-def]
    profiles, apps = draw(profile_specs()), draw(app_specs())
    facts = DeviceFacts(
        "d1",
        draw(st.sampled_from(["enrolled", "exiting"])),
        draw(st.sampled_from(CATEGORIES)),
        "ipados",
        draw(st.sampled_from(ACCESS)),
        draw(subsets(st.sampled_from(GROUPS), max_size=2)),
    )
    inventory = Inventory(enrolled=True)
    for identifier in draw(st.lists(st.sampled_from([*PROFILE_IDS, "com.family.vpn"]), unique=True, max_size=4)):
        inventory.profiles.append(Profile(identifier, draw(st.integers(1, 4))))
    school_installs: dict[str, str] = {}
    for identifier in draw(
        st.lists(st.sampled_from([*APP_IDS, "com.family.game", "com.old.mdm"]), unique=True, max_size=5)
    ):
        managed = draw(st.booleans())
        inventory.apps.append(App(identifier, draw(versions), managed))
        spec = next((a for a in apps if a.identifier == identifier), None)
        if managed and spec is not None and draw(st.booleans()):
            school_installs[spec.id] = "installed"  # the service's own record says the school put it there
    return facts, profiles, apps, inventory, school_installs


def reported_from(inventory: Inventory, school_installs: dict[str, str]) -> Reported:
    return Reported(
        profiles={p.identifier: p.version for p in inventory.profiles},
        apps={a.identifier: ReportedApp(a.version, a.managed) for a in inventory.apps},
        school_installs=dict(school_installs),
    )


def command_for(action) -> dict:  # type: ignore[no-untyped-def]
    identifier = action.target.split(":", 1)[1]
    payload: dict = {"identifier": identifier}
    if action.type == "InstallProfile":
        payload.update(version=action.profile.version, profile=[])
    if action.type == "InstallApplication" and action.app.min_version:
        payload["version"] = action.app.min_version
    return {"id": f"c-{action.target}", "type": action.type, "payload": payload}


def plan_for(facts, profiles, apps, reported):  # type: ignore[no-untyped-def]
    school_profiles = {p.identifier for p in profiles}
    return plan_device(facts, profiles, school_profiles, apps, {a.id: a for a in apps}, reported)


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_acknowledged_commands_converge_the_device_in_one_round(world):  # type: ignore[no-untyped-def]
    facts, profiles, apps, inventory, school_installs = world
    plan = plan_for(facts, profiles, apps, reported_from(inventory, school_installs))
    for app_id in plan.release:
        school_installs.pop(app_id, None)
    for action in plan.queue:
        outcome = inventory.apply_command(command_for(action))
        assert outcome.status == "acknowledged", (action, outcome)
        if action.type == "InstallApplication":
            school_installs[action.app.id] = "installed"
        if action.type == "RemoveApplication":
            school_installs.pop(action.app.id, None)
    again = plan_for(facts, profiles, apps, reported_from(inventory, school_installs))
    assert again.queue == []
    # The device now holds exactly the school profiles it should, at their versions; foreign ones stay.
    wanted = {p.identifier: p.version for p in profiles if profile_reasons(facts, p) is not None}
    held = {p.identifier: p.version for p in inventory.profiles}
    school = {p.identifier for p in profiles}
    assert {k: v for k, v in held.items() if k in school} == wanted
    assert ("com.family.vpn" in held) == any(p.identifier == "com.family.vpn" for p in world[3].profiles)
    desired = {a.identifier for a in apps if app_reasons(facts, a) is not None}
    on_device = {a.identifier for a in inventory.apps}
    family = {a.identifier for a in inventory.apps if not a.managed}
    assert desired - family <= on_device
    for app in inventory.apps:
        if app.identifier in desired and app.managed:
            spec = next(a for a in apps if a.identifier == app.identifier)
            assert meets_minimum(app.version, spec.min_version)


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_no_command_targets_an_app_the_school_did_not_install(world):  # type: ignore[no-untyped-def]
    facts, profiles, apps, inventory, school_installs = world
    plan = plan_for(facts, profiles, apps, reported_from(inventory, school_installs))
    school_app_ids = {a.identifier for a in apps if a.id in school_installs}
    unmanaged = {a.identifier for a in inventory.apps if not a.managed}
    for action in plan.queue:
        identifier = action.target.split(":", 1)[1]
        if action.type == "RemoveApplication":
            assert identifier in school_app_ids
        if action.type.endswith("Application"):
            assert identifier not in unmanaged
        if action.type == "RemoveProfile":
            assert identifier != "com.family.vpn"


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_planning_again_while_commands_are_open_queues_nothing(world):  # type: ignore[no-untyped-def]
    facts, profiles, apps, inventory, school_installs = world
    reported = reported_from(inventory, school_installs)
    first = plan_for(facts, profiles, apps, reported)
    reported.open_commands = {a.target: (f"c-{a.target}", a.intent) for a in first.queue}
    second = plan_for(facts, profiles, apps, reported)
    assert second.queue == []
    assert second.cancel == []
