from datetime import datetime

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlmodel import Field, SQLModel

from mdm.actor import Role
from mdm.database import UtcDateTime
from mdm.validation import Input


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=200)
    role: str = Field(max_length=20)
    # SHA-256 of the secret: tokens carry 256 random bits, so a fast hash is enough and lookups stay O(1).
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=200)
    last_used_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class TokenCreate(Input):
    name: str = PydanticField(min_length=1, max_length=200)
    role: Role


class TokenPublic(BaseModel):
    id: str
    name: str
    role: Role
    prefix: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = PydanticField(description="The secret. Shown once; store it now.")
