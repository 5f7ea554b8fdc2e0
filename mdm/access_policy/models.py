from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlmodel import Field, SQLModel

from mdm.categories import Category, NetworkAccess
from mdm.database import UtcDateTime
from mdm.validation import Input


class AccessRule(SQLModel, table=True):
    __tablename__ = "access_policy"

    category: str = Field(primary_key=True, max_length=30)
    allowed: bool
    network_access: str = Field(max_length=20)
    notes: str = Field(default="", max_length=2000)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class AccessRuleUpdate(Input):
    allowed: bool
    network_access: NetworkAccess
    notes: str = PydanticField("", max_length=2000)


class AccessRulePublic(BaseModel):
    category: Category
    allowed: bool
    network_access: NetworkAccess
    notes: str
    updated_at: datetime
