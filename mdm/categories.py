"""The ownership categories and network access levels of the school's mobile technologies policy."""

from enum import StrEnum


class Category(StrEnum):
    school_single_user = "school_single_user"
    school_shared = "school_shared"
    authorised = "authorised"
    learner_owned = "learner_owned"
    staff_owned = "staff_owned"
    visitor_owned = "visitor_owned"


SCHOOL_OWNED = frozenset({Category.school_single_user, Category.school_shared})
PERSONAL = frozenset(Category) - SCHOOL_OWNED


class NetworkAccess(StrEnum):
    full = "full"
    internet_only = "internet_only"
    none = "none"


class Platform(StrEnum):
    ios = "ios"
    ipados = "ipados"
    android = "android"
    windows = "windows"
    macos = "macos"
    chromeos = "chromeos"
